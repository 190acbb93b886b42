"""What the backward's small costs add up to: an F400 training step with and without them, in one run.

"before" is the step as it was: σ through autograd's clamp-and-divide backward, and Broyden's
memory zero-filled at every solve. "after" is the library as it is: `rate_function` (a one-multiply
backward) and uninitialised memory. Both run the same steps on the same batch with the same
weights (the two give bit-identical losses, checked here); the configurations alternate round by
round so that a busy machine slows both alike. Writes bench/results/step-overheads-<device>.{json,md}.

    python bench/bench_step_overheads.py [--rounds 7] [--steps 30] [--threads 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
from pathlib import Path

import torch

import models
from implicit_snn import network as network_module
from solvers import _broyden

from common import run_header, timed_sgd_steps, write_results


@contextlib.contextmanager
def before_changes():
    """σ by torch.clamp and a zero-filled Broyden memory, as before the change."""
    rate_and_slope, init = network_module.rate_and_slope, _broyden.Broyden.init

    def zero_filled_init(self, g, z0, gz0):
        state = init(self, g, z0, gz0)
        state.us.zero_(), state.vts.zero_()
        return state

    def clamp_and_slope(current, vth):
        scaled = current.detach() / vth
        return torch.clamp(current / vth, 0.0, 1.0), ((scaled > 0) & (scaled < 1)).to(current.dtype) / vth

    network_module.rate_and_slope = clamp_and_slope
    _broyden.Broyden.init = zero_filled_init
    try:
        yield
    finally:
        network_module.rate_and_slope, _broyden.Broyden.init = rate_and_slope, init


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = models.build_model("f400").to(args.device).train()
    state = copy.deepcopy(model.state_dict())
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(128, 1, 28, 28, generator=gen).to(args.device)
    y = torch.randint(0, 10, (128,), generator=gen).to(args.device)
    timed_sgd_steps(model, state, [(x, y)] * 5, args.device)  # warm-up
    medians: dict[str, list[float]] = {"before": [], "after": []}
    losses: dict[str, float] = {}
    for _ in range(args.rounds):
        for name in ("before", "after"):
            with before_changes() if name == "before" else contextlib.nullcontext():
                times, losses[name] = timed_sgd_steps(model, state, [(x, y)] * args.steps, args.device)
            medians[name].append(statistics.median(times))
    before, after = statistics.median(medians["before"]), statistics.median(medians["after"])
    report = {
        **run_header(args.device),
        "rounds": args.rounds, "steps_per_round": args.steps,
        "ms_per_step_before": before, "ms_per_step_after": after, "speedup": before / after,
        "round_medians": medians, "same_loss": losses["before"] == losses["after"],
    }
    text = (f"# F400 training step, backward overheads ({report['device_name']}, torch {report['torch']}, "
            f"{report['date']})\n\n"
            f"Median over {args.rounds} alternating rounds of the per-round median of {args.steps} steps "
            "(batch 128, LIF T=5, Broyden to 1e-6).\n\n"
            "| configuration | ms / step |\n|---|---|\n"
            f"| before: clamp backward, zero-filled Broyden memory | {before:.2f} |\n"
            f"| after: `rate_function`, uninitialised memory | {after:.2f} |\n\n"
            f"Speed-up {before / after:.2f}×; the two configurations' losses after {args.steps} steps are "
            f"{'bit-identical' if report['same_loss'] else 'DIFFERENT'}.\n")
    write_results(args.out, f"step-overheads-{args.device}", report, text)


if __name__ == "__main__":
    main()
