"""Does ``torch.compile`` of the spiking simulation pay? The F400 forward, eager against compiled.

Two measurements, alternating eager and compiled in rounds in one run (1 thread, batch 128):

* **bare loop**: the F400 LIF simulation written as a minimal loop (input product once, one
  feedback ``addmm`` and three elementwise updates per step), eager and compiled, beside its
  products alone;
* **library forward**: ``model(x)`` of the f400 preset in training mode, with the producer's
  ``_Simulation._simulate`` replaced by its compiled version.

    python bench/bench_compile.py --time-steps 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import models  # noqa: E402
from bench.common import run_header, write_results  # noqa: E402
from implicit_snn.producers import _spiking  # noqa: E402


def per_call_ms(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e3


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--time-steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--tag", default="compile-f400")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    steps, leak, vth = args.time_steps, 0.95, 2.0
    torch.manual_seed(0)
    x = torch.rand(128, 784)
    w_in, w_fb = torch.randn(784, 400) * 0.05, torch.randn(400, 400) * 0.05
    mask = (torch.rand(128, 400) < 0.8).float() / 0.8

    def bare_loop():
        drive = x @ w_in
        u, s, r = torch.zeros_like(drive), torch.zeros_like(drive), torch.zeros_like(drive)
        for t in range(steps):
            current = drive if t == 0 else torch.addmm(drive, s * mask, w_fb)
            u = leak * u + current
            s = (u >= vth).to(u.dtype)
            u = u - vth * s
            r = leak * r + s
        return r

    def products_only():
        drive = x @ w_in
        s = drive
        for _ in range(steps - 1):
            s = torch.addmm(drive, s, w_fb)
        return s

    compiled_loop = torch.compile(bare_loop, dynamic=False)
    model = models.build_model("f400", producer_options=dict(time_steps=steps)).train()
    images = torch.rand(128, 1, 28, 28)
    eager_simulate = _spiking._Simulation._simulate
    compiled_simulate = torch.compile(eager_simulate, dynamic=False)

    def forward_with(simulate):
        def run():
            _spiking._Simulation._simulate = simulate
            with torch.no_grad():
                return model(images)
        return run

    configs = {"bare loop, eager": bare_loop, "bare loop, compiled": compiled_loop,
               "bare loop's products": products_only,
               "library forward, eager": forward_with(eager_simulate),
               "library forward, compiled simulation": forward_with(compiled_simulate)}
    try:
        start = time.perf_counter()
        for fn in configs.values():
            for _ in range(3):
                fn()
        warmup_s = time.perf_counter() - start
        torch.manual_seed(1)
        eager_out = forward_with(eager_simulate)()
        torch.manual_seed(1)
        compiled_out = forward_with(compiled_simulate)()
        times: dict[str, list[float]] = {name: [] for name in configs}
        for _ in range(args.rounds):
            for name, fn in configs.items():
                times[name].append(per_call_ms(fn, args.calls))
    finally:
        _spiking._Simulation._simulate = eager_simulate
    medians = {name: statistics.median(values) for name, values in times.items()}
    report = {"header": run_header("cpu"), "time_steps": steps, "batch": 128, "rounds": args.rounds,
              "calls": args.calls, "warmup_and_compile_s": warmup_s, "ms": times, "median_ms": medians,
              "max_abs_difference_of_logits": float((eager_out - compiled_out).abs().max()),
              "command": "python bench/bench_compile.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    lines = [f"# torch.compile of the F400 simulation, T = {steps} ({report['header']['device_name']}, torch "
             f"{report['header']['torch']}, {report['header']['date']})", "",
             f"Batch 128, median over {args.rounds} alternating rounds of {args.calls} calls. Command: "
             f"`{report['command']}`. Compiled and eager logits differ by at most "
             f"{report['max_abs_difference_of_logits']:.1e}.", "",
             "| configuration | ms per call |", "|---|---|"]
    lines += [f"| {name} | {value:.2f} |" for name, value in medians.items()]
    products = medians["bare loop's products"]
    ratios = {"bare_eager_over_products": medians["bare loop, eager"] / products,
              "bare_compiled_over_products": medians["bare loop, compiled"] / products,
              "library_compiled_over_eager": medians["library forward, compiled simulation"]
              / medians["library forward, eager"]}
    report["ratios"] = ratios
    lines += ["", f"Bare loop over its products: eager {ratios['bare_eager_over_products']:.2f}×, compiled "
              f"{ratios['bare_compiled_over_products']:.2f}×; library forward, compiled over eager: "
              f"{ratios['library_compiled_over_eager']:.2f}×."]
    write_results(args.out, args.tag, report, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
