"""Benchmark: each solver's own work per iteration, against the cost of one map evaluation.

The problem is shaped like the F400 backward: the linear adjoint map g(v) = (v * s) @ W + b with
B=128 samples of D=400 units in float32, s a 0/1 mask (about half ones) over Vth = 2, and W
scaled so that ‖diag(s) W‖₂ ≤ 0.5. Each solve runs exactly ``--steps`` steps (tol is far below
float32 rounding, so no sample converges early); the solver's own work per iteration is

    (time of the solve − time of steps + 1 bare map evaluations) / steps,

i.e. everything but the map: the driver's residuals, best-iterate bookkeeping and checks, and
the solver's update, with the one-off start (first evaluation's checks, allocation) spread over
the steps. The solvers and the bare map alternate within every round, and the figure is the
median over rounds, so that a busy machine slows all alike. With ``--baseline DIR`` a second copy
of the solver package (e.g. a ``git worktree`` of an older commit, ``DIR`` its ``solvers/``) is
timed in the same rounds. Writes bench/results/solver-overhead-<device>.{json,md}.

    python bench/bench_solver_overhead.py [--baseline /tmp/solvers-base/solvers] [--rounds 15]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

import solvers

from common import run_header, sync, write_results

SOLVERS = ["broyden", "anderson", "fixed_point"]
BATCH, DIM, VTH, NORM = 128, 400, 2.0, 0.5


def load_solver_package(directory: str, name: str = "solvers_baseline") -> Any:
    """Import the solver package in ``directory`` under another name, beside the current one."""
    path = Path(directory).resolve() / "__init__.py"
    spec = importlib.util.spec_from_file_location(name, path, submodule_search_locations=[str(path.parent)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its relative imports look the package up here
    spec.loader.exec_module(module)
    return module


def adjoint_problem(device: str, seed: int = 0) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]:
    """The F400-shaped linear adjoint map and its right-hand side (the initial guess)."""
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(DIM, DIM, generator=gen)
    weight *= (NORM * VTH) / torch.linalg.matrix_norm(weight, ord=2)  # ‖diag(s) W‖₂ ≤ ‖W‖₂ / Vth = NORM
    mask = (torch.rand(BATCH, DIM, generator=gen) < 0.5).float()
    slope = (mask / VTH).to(device)
    bias = torch.randn(BATCH, DIM, generator=gen).to(device)
    weight = weight.to(device)

    def g(v: torch.Tensor) -> torch.Tensor:
        return torch.addmm(bias, v * slope, weight)

    return g, bias


def time_once(fn: Callable[[], Any], device: str) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return 1e3 * (time.perf_counter() - start)


def measure(variants: dict[str, Any], device: str, rounds: int, steps: int) -> dict[str, Any]:
    """Median solve and bare-map times over alternating rounds, and the per-iteration work."""
    g, rhs = adjoint_problem(device)
    settings = dict(max_iter=steps, tol=1e-30, stop_mode="rel")

    def bare_maps() -> None:
        v = rhs
        for _ in range(steps + 1):
            v = g(v)

    jobs: dict[str, Callable[[], Any]] = {"map": bare_maps}
    for label, (package, context) in variants.items():
        for name in SOLVERS:
            solver = package.get_solver(name)

            def job(s=solver, c=context):
                with c():
                    return s(g, rhs, **settings)

            jobs[f"{label}/{name}"] = job
    for job in jobs.values():  # warm-up: first calls allocate and dispatch slowly
        job(), job()
    times: dict[str, list[float]] = {key: [] for key in jobs}
    keys = list(jobs)
    for r in range(rounds):
        # Rotate the order each round so that no job always follows the same one.
        for key in keys[r % len(keys):] + keys[:r % len(keys)]:
            times[key].append(time_once(jobs[key], device))
    map_ms = statistics.median(times["map"]) / (steps + 1)
    rows = []
    for label, (package, context) in variants.items():
        for name in SOLVERS:
            with context():
                result = package.get_solver(name)(g, rhs, **settings)
            assert result.n_steps == steps and result.n_evals == steps + 1, (label, name, result.summary())
            # Per round: the solve minus that round's bare maps, so both see the same load.
            work = [(t - m) / steps for t, m in zip(times[f"{label}/{name}"], times["map"])]
            rows.append({
                "variant": label, "solver": name,
                "solve_ms": statistics.median(times[f"{label}/{name}"]),
                "work_ms_per_iter": statistics.median(work),
                "work_per_map": statistics.median(work) / map_ms,
                "rel_residual_max": float(result.rel_residual.max()),
            })
    return {"map_ms": map_ms, "rows": rows}


def to_markdown(report: dict[str, Any]) -> str:
    m = report["measurement"]
    lines = [
        f"# Solver work per iteration ({report['device_name']}, torch {report['torch']}, {report['date']})", "",
        f"F400-shaped adjoint map g(v) = (v * s) @ W + b: B={BATCH}, D={DIM}, float32, {report['threads']} thread(s). "
        f"Each solve runs {report['steps']} steps; work per iteration = (solve − {report['steps'] + 1} bare "
        f"map evaluations) / {report['steps']}, median over {report['rounds']} alternating rounds. "
        f"One map evaluation: **{m['map_ms']:.3f} ms**.", "",
        "| variant | solver | solve ms | work ms / iter | × one map evaluation | max rel. residual |",
        "|---|---|---|---|---|---|",
    ]
    for row in m["rows"]:
        lines.append(f"| {row['variant']} | {row['solver']} | {row['solve_ms']:.2f} | {row['work_ms_per_iter']:.3f} | "
                     f"{row['work_per_map']:.2f} | {row['rel_residual_max']:.1e} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--baseline", default=None, help="a solvers/ package directory to time beside the current one")
    parser.add_argument("--baseline-label", default="before")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    variants: dict[str, tuple[Any, Callable[[], Any]]] = {}
    if args.baseline:
        variants[args.baseline_label] = (load_solver_package(args.baseline), contextlib.nullcontext)
    variants["after" if args.baseline else "current"] = (solvers, contextlib.nullcontext)
    report = {
        **run_header(args.device), "threads": args.threads, "rounds": args.rounds, "steps": args.steps,
        "baseline": args.baseline, "measurement": measure(variants, args.device, args.rounds, args.steps),
    }
    write_results(args.out, f"solver-overhead-{args.device}", report, to_markdown(report))


if __name__ == "__main__":
    main()
