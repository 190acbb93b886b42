"""How tight must the backward be? Training steps of a model preset at several adjoint tolerances, in one run.

For each backward tolerance (Broyden, relative residual) the same SGD steps are taken from the
same weights on the same Fashion-MNIST batches with the same dropout masks; the tolerances
alternate round by round so that a busy machine slows all of them alike. Reported per tolerance:
milliseconds per step, VJPs per backward, and the relative error of the parameter gradient
against a backward solved to 1e-9 at the same weights. The weights are those after
``--pretrain-steps`` steps of ordinary training (a trained network's adjoint system is what a
run spends its time on). The accuracy of whole trainings at a looser tolerance is measured by
the CLI (docs/results.md). Writes bench/results/backward-tol-<model>-<device>[-<threads>threads].{json,md}.

    python bench/bench_backward_tol.py [--model f400] [--tols 1e-6 1e-4 1e-3 1e-2] [--rounds 5] [--steps 20]
"""

from __future__ import annotations

import argparse
import copy
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

import models
from implicit_snn.data import BatchLoader, load_dataset

from common import run_header, timed_sgd_steps, write_results

REFERENCE_TOL = 1e-9


def parameter_gradient(model, state, x, y, tol: float, max_iter: int) -> torch.Tensor:
    """All parameter gradients of one batch's loss at the weights ``state``, flattened, with the
    adjoint solved to ``tol``."""
    # Every training-mode forward moves the spectral norm's power iteration and batch norm's
    # running statistics: start each gradient from the same buffers.
    model.load_state_dict(state)
    model.set_backward("broyden", b_max_iter=max_iter, b_tol=tol)
    torch.manual_seed(0)  # the same dropout mask for every tolerance
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="f400", choices=models.available_models(),
                        help="a preset taking 1x28x28 inputs (Fashion-MNIST): f400 or f64c5")
    parser.add_argument("--tols", type=float, nargs="+", default=[1e-6, 1e-4, 1e-3, 1e-2])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--data-root", default=None, help="folder with the Fashion-MNIST IDX files")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    if any(not 0 < t < 1 for t in args.tols):
        parser.error("--tols: each tolerance must lie in (0, 1)")
    torch.set_num_threads(args.threads)
    device = args.device
    torch.manual_seed(0)
    train = load_dataset("fashion-mnist", "train", root=args.data_root)
    loader = BatchLoader(train, 128, shuffle=True, generator=torch.Generator().manual_seed(0))
    model = models.build_model(args.model).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    batches = []
    for step, (x, y) in zip(range(args.pretrain_steps + args.steps), loader):
        x, y = x.to(device), y.to(device)
        if step >= args.pretrain_steps:
            batches.append((x, y))
            continue
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    state = copy.deepcopy(model.state_dict())

    x0, y0 = batches[0]
    exact = parameter_gradient(model, state, x0, y0, REFERENCE_TOL, 200)
    # float32 stalls near 1e-7: the achieved residual is the error floor of the comparison.
    reference_residual = float(model.last_backward.rel_residual.max())
    grad_error = {t: float((parameter_gradient(model, state, x0, y0, t, 30) - exact).norm() / exact.norm()) for t in args.tols}

    model.set_backward("broyden", b_max_iter=30, b_tol=args.tols[0])
    timed_sgd_steps(model, state, batches[:3], device)  # warm-up
    medians: dict[float, list[float]] = {t: [] for t in args.tols}
    vjps: dict[float, float] = {}
    losses: dict[float, float] = {}
    for _ in range(args.rounds):
        for tol in args.tols:
            model.set_backward("broyden", b_max_iter=30, b_tol=tol)
            counts: list[int] = []
            times, losses[tol] = timed_sgd_steps(model, state, batches, device,
                                                 on_step=lambda: counts.append(model.last_backward.n_evals))
            medians[tol].append(statistics.median(times))
            vjps[tol] = statistics.mean(counts)
    ms = {t: statistics.median(medians[t]) for t in args.tols}
    base = args.tols[0]
    report = {
        **run_header(device), "model": args.model,
        "rounds": args.rounds, "steps_per_round": args.steps, "pretrain_steps": args.pretrain_steps,
        "threads": args.threads, "reference_tol": REFERENCE_TOL, "reference_residual": reference_residual,
        "tols": [{"tol": t, "ms_per_step": ms[t], "speedup_vs_first": ms[base] / ms[t],
                  "vjps_per_backward": vjps[t], "grad_rel_error": grad_error[t],
                  "loss_after_steps": losses[t], "round_medians": medians[t]} for t in args.tols],
    }
    rows = "".join(f"| {t:g} | {vjps[t]:.1f} | {grad_error[t]:.1e} | {ms[t]:.2f} | {ms[base] / ms[t]:.2f}× |"
                   f" {losses[t]:.4f} |\n" for t in args.tols)
    text = (f"# {args.model} training step at several backward tolerances ({report['device_name']}, torch {report['torch']}, {report['date']})\n\n"
            f"Batch 128, the preset's producer ({model.producer!r}), Broyden backward (at most 30 steps), weights after {args.pretrain_steps} "
            f"training steps on Fashion-MNIST; median over {args.rounds} alternating rounds of the per-round "
            f"median of {args.steps} steps. Gradient error: ‖∇θ − ∇θ*‖ / ‖∇θ*‖ on the first batch, ∇θ* "
            f"from a backward solved as far as float32 goes (largest relative residual "
            f"{reference_residual:.1e}).\n\n"
            f"| backward tol | VJPs / backward | ∇θ rel. error | ms / step | speed-up vs {base:g} | "
            f"loss after {args.steps} steps |\n|---|---|---|---|---|---|\n{rows}")
    threads = f"-{args.threads}thread{'s' if args.threads > 1 else ''}" if device == "cpu" else ""
    write_results(args.out, f"backward-tol-{args.model}-{device}{threads}", report, text)


if __name__ == "__main__":
    main()
