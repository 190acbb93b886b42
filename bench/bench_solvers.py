"""Benchmark: backward and forward solvers, ours against torchdeq's, on F400-sized problems.

Measures, for each solver in one process on one device: evaluations of the map (VJPs in a
backward), wall time (median of repeats), worst relative residual, fraction of samples
converged, and for the backward problem the error of dW against the dense implicit gradient.
Writes bench/results/solvers-<device>.{json,md}.

    python bench/bench_solvers.py [--device cpu|cuda] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

import solvers
from implicit_snn.demo import compare_backward_solvers, matrices_with_norm

from common import run_header, sync, write_results

SOLVERS = ["broyden", "anderson", "fixed_point", "neumann",
           "torchdeq_broyden", "torchdeq_anderson", "torchdeq_fixed_point_iter"]


def backward_rows(device: str, repeats: int, max_iter: int) -> list[dict]:
    """F400-like backward: D=400, batch 128, ‖W‖₂=0.9, float32, tol 1e-6 (relative)."""
    runs = [compare_backward_solvers(SOLVERS, dim=400, in_dim=784, batch=128, norm=0.9, max_iter=max_iter,
                                     tol=1e-6, device=device) for _ in range(repeats + 1)][1:]
    rows = []
    for i, name in enumerate(SOLVERS):
        first = runs[0][i]
        rows.append({
            "solver": name, "evals": first.n_evals, "ms": statistics.median(r[i].milliseconds for r in runs),
            "rel_residual": first.rel_residual, "converged": first.converged, "status": first.status,
            "dW_error": first.grad_error,
        })
    return rows


def affine_rows(device: str, repeats: int, norm: float, max_iter: int) -> list[dict]:
    """z = A z + c, A symmetric with eigenvalues spread over [−norm, norm], D=400, batch 128, float32."""
    gen = torch.Generator().manual_seed(0)
    a = matrices_with_norm(1, 400, norm, generator=gen, symmetric=True)[0].float().to(device)
    c = torch.randn(128, 400, generator=gen).to(device)

    def g(z):
        return z @ a + c

    exact = torch.linalg.solve((torch.eye(400, device=device) - a).double(), c.double().T).T
    rows = []
    for name in SOLVERS:
        solver = solvers.get_solver(name)
        times = []
        for _ in range(repeats + 1):
            sync(device)
            start = time.perf_counter()
            result = solver(g, torch.zeros_like(c), max_iter=max_iter, tol=1e-6)
            sync(device)
            times.append(1e3 * (time.perf_counter() - start))
        error = float(((result.z.double() - exact).norm(dim=1) / exact.norm(dim=1)).max())
        summary = result.summary()
        rows.append({
            "solver": name, "evals": result.n_evals, "ms": statistics.median(times[1:]),
            "rel_residual": summary["rel_residual_max"], "converged": summary["converged_fraction"],
            "status": summary["status"], "solution_error": error,
        })
    return rows


def to_markdown(report: dict) -> str:
    lines = [f"# Solver benchmark on {report['device_name']}", "",
             f"torch {report['torch']}, {report['date']}, median of {report['repeats']} repeats "
             "after one warm-up. `evals` counts map evaluations (VJPs in a backward); torchdeq rows "
             "include the adapter's one evaluation that measures the residual at the returned point.", ""]
    for title, key, extra in [
        ("Backward of an F400-sized implicit layer (D=400, batch 128, ‖W‖₂=0.9, float32, tol 1e-6, at most 30 steps)",
         "backward_30", "dW_error"),
        ("Same, at most 100 steps", "backward_100", "dW_error"),
        ("Affine z = Az + c, symmetric A, eigenvalues in [−0.95, 0.95] (D=400, batch 128, float32, tol 1e-6, at most 500 steps)",
         "affine_0.95", "solution_error"),
    ]:
        lines += [f"## {title}", "", f"| solver | evals | ms | max rel. residual | converged | status | {extra} |",
                  "|---|---|---|---|---|---|---|"]
        for row in report[key]:
            lines.append(f"| {row['solver']} | {row['evals']} | {row['ms']:.1f} | {row['rel_residual']:.2e} | "
                         f"{row['converged']:.0%} | {row['status']} | {row[extra]:.2e} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    report = {
        **run_header(args.device),
        "repeats": args.repeats,
        "backward_30": backward_rows(args.device, args.repeats, 30),
        "backward_100": backward_rows(args.device, args.repeats, 100),
        "affine_0.95": affine_rows(args.device, args.repeats, 0.95, 500),
    }
    write_results(args.out, f"solvers-{args.device}", report, to_markdown(report))


if __name__ == "__main__":
    main()
