"""Where an IDE training step's time goes: torch.profiler's operator table, grouped.

One SGD step (forward, backward, optimiser) of a preset on one random batch, profiled over
``--steps`` steps after warm-up, 1 thread. Operators are grouped into the products the step
cannot avoid (matrix products, convolutions), random draws (dropout masks) and everything else;
"outside operators" is the wall time not spent in any operator (Python, autograd's engine, the
solver's control flow). Results: ``bench/results/profile-<tag>.{json,md}``.

    python bench/profile_step.py --model f400 --time-steps 5 --tag f400-t5
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import models  # noqa: E402
from bench.common import run_header, write_results  # noqa: E402
from implicit_snn.app._allocator import retain_freed_memory  # noqa: E402

PRODUCTS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::mv", "aten::addmv_",
            "aten::mkldnn_convolution", "aten::convolution_backward", "aten::_convolution", "aten::conv2d")
RANDOM = ("aten::uniform_", "aten::bernoulli_", "aten::normal_")
PHASES = ("forward", "backward", "optimiser")


def group(name: str) -> str:
    if name in PRODUCTS:
        return "products"
    if name in RANDOM:
        return "random draws"
    return "other operators"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="f400")
    parser.add_argument("--time-steps", type=int, default=5)
    parser.add_argument("--b-tol", type=float, default=None, help="the backward's tolerance (default: the preset's)")
    parser.add_argument("--b-solver", default=None, help="the backward solver (default: the preset's)")
    parser.add_argument("--sim-precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--method", default="ide", choices=("ide", "bptt"))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--tag", default="f400-t5")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    retain_freed_memory()
    torch.manual_seed(0)
    options: dict[str, Any] = dict(producer_options=dict(time_steps=args.time_steps, sim_precision=args.sim_precision))
    if args.method == "bptt":
        options.update(method="bptt")
    else:
        if args.b_solver is not None:  # its own options replace the preset's solver's
            options.update(b_solver=args.b_solver, b_options={})
        if args.b_tol is not None:
            options.update(b_tol=args.b_tol)
    model = models.build_model(args.model, **options).train()
    shape = models.get_preset(args.model).in_shape
    x, y = torch.rand(args.batch, *shape), torch.randint(0, 10, (args.batch,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)

    def step():
        with record_function("forward"):
            loss = F.cross_entropy(model(x), y)
        with record_function("backward"):
            loss.backward()
        with record_function("optimiser"):
            optimizer.step()
            optimizer.zero_grad()

    for _ in range(3):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        wall = (time.perf_counter() - start) / args.steps * 1e3
    # Self times per operator, and which phase each falls in (by the record_function ranges).
    events = prof.events()
    phase_ranges = {name: [] for name in PHASES}
    for event in events:
        if event.name in PHASES:
            phase_ranges[event.name].append((event.time_range.start, event.time_range.end))
    table: dict[str, dict[str, Any]] = {}
    phase_total = {name: 0.0 for name in PHASES}
    for event in events:
        if event.name in PHASES:
            phase_total[event.name] += event.time_range.elapsed_us() / 1e3 / args.steps
            continue
        phase = next((name for name, ranges in phase_ranges.items()
                      if any(s <= event.time_range.start < e for s, e in ranges)), None)
        if phase is None or not event.name.startswith("aten::"):
            continue
        row = table.setdefault(event.name, {"op": event.name, "calls": 0, "self_ms": 0.0,
                                            **{f"{p}_ms": 0.0 for p in PHASES}})
        self_ms = event.self_cpu_time_total / 1e3 / args.steps
        row["calls"] += 1 / args.steps
        row["self_ms"] += self_ms
        row[f"{phase}_ms"] += self_ms
    groups: dict[str, dict[str, float]] = {}
    for row in table.values():
        g = groups.setdefault(group(row["op"]), {p: 0.0 for p in PHASES})
        for phase in PHASES:
            g[phase] += row[f"{phase}_ms"]
    groups["outside operators"] = {p: phase_total[p] - sum(g[p] for g in groups.values()) for p in PHASES}
    rows = sorted(table.values(), key=lambda r: -r["self_ms"])
    report = {"header": run_header("cpu"), "model": args.model, "time_steps": args.time_steps,
              "method": args.method, "b_solver": args.b_solver, "b_tol": args.b_tol,
              "sim_precision": args.sim_precision, "batch": args.batch, "steps": args.steps,
              "wall_ms_per_step_profiled": wall, "phase_ms": phase_total, "groups": groups, "operators": rows,
              "command": "python bench/profile_step.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    backward = "" if args.method == "bptt" else ", backward " + ", ".join(
        [args.b_solver or "the preset's"] + ([f"b_tol {args.b_tol:g}"] if args.b_tol is not None else []))
    lines = [f"# Profile of one training step: {args.model}, T = {args.time_steps}, {args.method}{backward}, "
             f"simulation {args.sim_precision} ({report['header']['device_name']}, "
             f"torch {report['header']['torch']}, {report['header']['date']})", "",
             f"Batch {args.batch}, {args.steps} profiled steps after 3 warm-up steps; ms per step (the profiler "
             f"adds its own cost per operator: {wall:.1f} ms per step while profiling).", "",
             f"Command: `{report['command']}`", "",
             "| group | " + " | ".join(PHASES) + " | step |", "|---|" + "---|" * (len(PHASES) + 1)]
    for name, g in groups.items():
        lines.append(f"| {name} | " + " | ".join(f"{g[p]:.2f}" for p in PHASES) + f" | {sum(g.values()):.2f} |")
    lines.append("| **phase total** | " + " | ".join(f"{phase_total[p]:.2f}" for p in PHASES)
                 + f" | {sum(phase_total.values()):.2f} |")
    lines += ["", "Operators by self time (ms per step; calls per step):", "",
              "| operator | calls | self ms | " + " | ".join(PHASES) + " |", "|---|---|---|" + "---|" * len(PHASES)]
    for row in rows[:25]:
        lines.append(f"| {row['op']} | {row['calls']:.0f} | {row['self_ms']:.3f} | "
                     + " | ".join(f"{row[f'{p}_ms']:.3f}" for p in PHASES) + " |")
    write_results(args.out, f"profile-{args.tag}", report, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
