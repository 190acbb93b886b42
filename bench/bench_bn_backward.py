"""Batch norm in training: how close each ``bn_backward`` comes to the gradient of the computed loss.

In training the simulation normalises layers 2..N with running statistics. ``--bn-backward
batch`` (the paper's choice) differentiates f with batch statistics instead, ``simulated`` the
map the simulation ran. This script measures, on a multi-layer conv network with the weights
of a run directory (and at initialisation):

* **against finite differences** (float64, the analytic producer solving the fixed point to
  1e-12, so that the loss is a smooth function of the parameters): per parameter tensor, the
  relative error of each mode's directional derivative ⟨∇L, d⟩ against the central difference of
  the computed loss along random directions d of that tensor;
* **at the training setting** (float32, the LIF simulation): the cosine similarity between the
  two modes' gradients, and the VJPs of each backward solve.

    python bench/bench_bn_backward.py --run bench/results/bn-backward/batch-seed0 --tag bn-backward
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import run_header, write_results  # noqa: E402
from implicit_snn.app import build as app  # noqa: E402
from implicit_snn.app.commands import load_checkpoint  # noqa: E402
from implicit_snn.app.config import RunConfig  # noqa: E402

MODES = ("batch", "simulated")


def build(config: RunConfig, state: Optional[dict], mode: str, *, analytic: bool, dtype: torch.dtype,
          in_shape: tuple[int, ...], num_classes: int = 10):
    """The run's model with ``bn_backward=mode``: the analytic producer (float64 FD) or the run's own."""
    settings = dict(vars(config))
    settings["bn_backward"] = mode
    if analytic:
        settings.update(producer="analytic", f_tol=1e-12, f_max_iter=400, f_solver="broyden")
    settings.update(b_tol=1e-12 if analytic else config.b_tol, b_max_iter=400 if analytic else config.b_max_iter)
    model = app.model_from_config(RunConfig(**settings), num_classes=10, in_shape=in_shape)
    if state is not None:
        model.load_state_dict(state)
    return model.to(dtype).train()


def gradient(model, x, y, buffers, seed: int) -> list[torch.Tensor]:
    """∇L of one training step from the given buffers and dropout masks (seed)."""
    restore(model, buffers)
    torch.manual_seed(seed)
    loss = F.cross_entropy(model(x), y)
    return [g.detach() for g in torch.autograd.grad(loss, list(model.parameters()))]


def restore(model, buffers) -> None:
    with torch.no_grad():
        for name, value in model.named_buffers():
            value.copy_(buffers[name])


def loss_at(model, x, y, buffers, seed: int) -> float:
    restore(model, buffers)
    torch.manual_seed(seed)
    with torch.no_grad():
        return float(F.cross_entropy(model(x), y))


def finite_difference_errors(config, state, x, y, *, directions: int, eps: float, seed: int) -> dict[str, Any]:
    """Per tensor and mode: median relative error of ⟨∇L, d⟩ against the central difference along d."""
    models = {mode: build(config, state, mode, analytic=True, dtype=torch.float64, in_shape=tuple(x.shape[1:]))
              for mode in MODES}
    x, reference = x.double(), models[MODES[0]]
    buffers = {k: v.clone() for k, v in reference.named_buffers()}
    grads = {mode: gradient(model, x, y, buffers, seed) for mode, model in models.items()}
    solves = {mode: model.last_backward.summary() for mode, model in models.items()}
    generator = torch.Generator().manual_seed(seed)
    rows, raw = [], []
    for index, (name, param) in enumerate(reference.named_parameters()):
        numeric, analytic = [], {mode: [] for mode in MODES}
        for _ in range(directions):
            d = torch.randn(param.shape, generator=generator, dtype=param.dtype)
            base = param.detach().clone()
            values = []
            for sign in (1.0, -1.0):
                with torch.no_grad():
                    param.copy_(base + sign * eps * d)
                values.append(loss_at(reference, x, y, buffers, seed))
            with torch.no_grad():
                param.copy_(base)
            numeric.append((values[0] - values[1]) / (2 * eps))
            for mode in MODES:
                analytic[mode].append(float((grads[mode][index] * d).sum()))
        raw.append((name, param.numel(), numeric, analytic))
    # A tensor whose true gradient is zero (a bias before batch norm) has a central difference of
    # rounding noise; errors are relative to the larger of |FD| and a floor far below every
    # other tensor's directional derivatives.
    floor = 1e-6 * statistics.median(abs(v) for _, _, numeric, _ in raw for v in numeric)
    for name, numel, numeric, analytic in raw:
        errors = {mode: statistics.median(abs(a - fd) / max(abs(fd), floor) for a, fd in zip(analytic[mode], numeric))
                  for mode in MODES}
        rows.append({"tensor": name, "numel": numel, "fd_directional": numeric,
                     **{f"ide_directional_{mode}": analytic[mode] for mode in MODES},
                     **{f"rel_error_{mode}": errors[mode] for mode in MODES}})
    return {"tensors": rows, "backward": solves, "error_floor": floor}


def training_setting(config, state, x, y, *, seed: int) -> dict[str, Any]:
    """float32, the run's own producer: cosine similarity of the two modes' gradients, VJPs."""
    models = {mode: build(config, state, mode, analytic=False, dtype=torch.float32, in_shape=tuple(x.shape[1:]))
              for mode in MODES}
    buffers = {k: v.clone() for k, v in models[MODES[0]].named_buffers()}
    grads = {mode: gradient(model, x, y, buffers, seed) for mode, model in models.items()}
    names = [name for name, _ in models[MODES[0]].named_parameters()]
    cos = [float(F.cosine_similarity(a.flatten(), b.flatten(), dim=0))
           for a, b in zip(grads["batch"], grads["simulated"])]
    flat = [torch.cat([g.flatten() for g in grads[mode]]) for mode in MODES]
    return {
        "cosine_per_tensor": dict(zip(names, cos)),
        "cosine_all": float(F.cosine_similarity(flat[0], flat[1], dim=0)),
        "relative_difference_all": float((flat[0] - flat[1]).norm() / flat[1].norm()),
        "vjps": {mode: models[mode].last_backward.n_evals for mode in MODES},
        "status": {mode: models[mode].last_backward.status.name for mode in MODES},
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# bn_backward against the gradient of the computed loss ({report['header']['device_name']}, "
             f"torch {report['header']['torch']}, {report['header']['date']})", "",
             report["description"], "", f"Command: `{report['command']}`", ""]
    for source in report["sources"]:
        lines += [f"## Weights: {source['weights']}", "",
                  f"Finite differences (float64, analytic producer, batch {report['batch']}, "
                  f"{report['directions']} random directions per tensor, ε = {report['eps']}): median relative error "
                  "of the directional derivative (relative to max(|FD|, "
                  f"{source['fd']['error_floor']:.1e}))", "",
                  "| tensor | numel | batch (paper) | simulated |", "|---|---|---|---|"]
        for row in source["fd"]["tensors"]:
            lines.append(f"| {row['tensor']} | {row['numel']} | {row['rel_error_batch']:.2e} | "
                         f"{row['rel_error_simulated']:.2e} |")
        solves = source["fd"]["backward"]
        lines += ["", "Backward solves (float64): " + "; ".join(
            f"{mode}: {solves[mode]['n_evals']} VJPs, {solves[mode]['status']}" for mode in MODES), ""]
        train = source["training"]
        lines += [f"Training setting (float32, the run's producer, batch {report['batch']}): cosine similarity of "
                  f"the two gradients {train['cosine_all']:.4f} (relative difference "
                  f"{train['relative_difference_all']:.3f}); VJPs batch {train['vjps']['batch']}, simulated "
                  f"{train['vjps']['simulated']}.", "",
                  "| tensor | cosine(batch, simulated) |", "|---|---|"]
        lines += [f"| {name} | {value:.4f} |" for name, value in train["cosine_per_tensor"].items()]
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a run directory (its config, and its weights unless --init-only)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--directions", type=int, default=2)
    parser.add_argument("--eps", type=float, default=1e-6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--tag", default="bn-backward")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    path, ckpt = load_checkpoint(args.run)
    config = RunConfig(**ckpt["config"])
    train, _, _ = app.load_splits(config)
    generator = torch.Generator().manual_seed(args.seed)
    index = torch.randperm(len(train.labels), generator=generator)[:args.batch]
    x, y = train.inputs[index].float(), train.labels[index]
    torch.manual_seed(0)  # one initialisation, shared by every model built from it
    initial = build(config, None, MODES[0], analytic=False, dtype=torch.float32, in_shape=tuple(x.shape[1:])).state_dict()
    sources = []
    for weights, state in (("initialisation (seed 0)", initial), (f"{path} (epoch {ckpt.get('epoch')})", ckpt["model"])):
        sources.append({
            "weights": weights,
            "fd": finite_difference_errors(config, state, x, y, directions=args.directions, eps=args.eps,
                                           seed=args.seed),
            "training": training_setting(config, state, x, y, seed=args.seed),
        })
        print(f"done: {weights}", file=sys.stderr)
    report = {
        "header": run_header("cpu"),
        "description": __doc__.split("\n\n")[1].replace("\n", " "),
        "command": "python bench/bench_bn_backward.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": config.model, "time_steps": config.time_steps, "batch": args.batch,
        "directions": args.directions, "eps": args.eps, "sources": sources,
    }
    write_results(args.out, args.tag, report, markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
