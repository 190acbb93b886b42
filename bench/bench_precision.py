"""The simulation in bfloat16 against float32 on trained networks: predictions, firing rates, one step's gradient.

For each run directory (its checkpoint: best, else last): the whole test split evaluated with the
simulation in fp32 and in bf16 (``sim_precision``), counting the images whose prediction differs,
both accuracies and each layer's mean firing rate. Then one training step (train mode, a seeded
batch, ``implicit_snn.analysis.FrozenStep``: the same dropout masks) is captured with each
precision, and its parameter gradient taken with the same tight backward (GMRES to 1e-7): the
bf16 gradient's error against the fp32 one, beside the batch-gradient noise, the relative
difference between the fp32 gradients of two different batches of the same size. Accuracy
measurements only: no timing. Writes a JSON report and prints a markdown table::

    python bench/bench_precision.py RUN [RUN ...] --out bench/results/precision-eval.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from implicit_snn import ImplicitAdjoint  # noqa: E402
from implicit_snn.analysis import FrozenStep  # noqa: E402
from implicit_snn.app.build import load_split, model_from_config  # noqa: E402
from implicit_snn.app.commands import checkpoint_config, load_checkpoint  # noqa: E402
from implicit_snn.files import atomic_write_text  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from common import run_header  # noqa: E402

PRECISIONS = ("fp32", "bf16")


def built(ckpt: dict, config, data, precision: str):
    """The checkpoint's model with its producer's simulation in ``precision``."""
    model = model_from_config(dataclasses.replace(config, method="ide", sim_precision=precision),
                              data.info.num_classes, data.info.in_shape)
    model.load_state_dict(ckpt["model"])
    return model


def evaluate(model, data, batch_size: int) -> dict:
    """Predictions and per-layer firing rates (mean over the split) of the model in eval mode."""
    model.eval()
    preds, rates, weights = [], None, []
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            x = data.inputs[start:start + batch_size].float()
            preds.append(model(x).argmax(1))
            layer_rates = [float(r) for r in model.last_forward["firing_rate_per_layer"]]
            rates = [0.0] * len(layer_rates) if rates is None else rates
            rates = [a + b * len(x) for a, b in zip(rates, layer_rates)]
            weights.append(len(x))
    total = sum(weights)
    return {"predictions": torch.cat(preds), "firing_rate_per_layer": [r / total for r in rates]}


def step_gradient(model, x, y, seed: int) -> torch.Tensor:
    step = FrozenStep.capture(model, x, y, seed)
    gradient, _, result = step.gradient(ImplicitAdjoint("gmres", b_max_iter=300, b_tol=1e-7))
    return gradient


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def measure(run: str, batch: int, eval_batch: int, seed: int) -> dict:
    path, ckpt = load_checkpoint(run)
    config = checkpoint_config(ckpt, {})
    data = load_split(config, "test")
    row: dict = {"run": run, "checkpoint": str(path), "model": config.model, "time_steps": config.time_steps}
    evals = {p: evaluate(built(ckpt, config, data, p), data, eval_batch) for p in PRECISIONS}
    labels = data.labels
    row["samples"] = len(labels)
    for p in PRECISIONS:
        row[f"accuracy_{p}"] = float((evals[p]["predictions"] == labels).float().mean())
        row[f"firing_rate_per_layer_{p}"] = evals[p]["firing_rate_per_layer"]
    row["differing_predictions"] = int((evals["fp32"]["predictions"] != evals["bf16"]["predictions"]).sum())
    row["firing_rate_difference_per_layer"] = [b - a for a, b in zip(evals["fp32"]["firing_rate_per_layer"],
                                                                       evals["bf16"]["firing_rate_per_layer"])]
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=gen)
    first, second = order[:batch], order[batch:2 * batch]
    x1, y1 = data.inputs[first].float(), labels[first]
    x2, y2 = data.inputs[second].float(), labels[second]
    grads = {p: step_gradient(built(ckpt, config, data, p), x1, y1, seed) for p in PRECISIONS}
    other = step_gradient(built(ckpt, config, data, "fp32"), x2, y2, seed)
    row["gradient_batch"] = batch
    row["gradient_error_bf16"] = relative(grads["bf16"], grads["fp32"])
    row["gradient_cosine_bf16"] = float(torch.nn.functional.cosine_similarity(grads["bf16"], grads["fp32"], dim=0))
    row["batch_gradient_noise"] = relative(other, grads["fp32"])
    return row


def markdown(report: dict) -> str:
    lines = [f"# The simulation in bf16 against fp32 ({report['device_name']}, torch {report['torch']}, {report['date']})",
             "", f"Command: `{report['command']}`", "",
             "| run | T | test images | accuracy fp32 | accuracy bf16 | predictions that differ | firing rate per layer "
             "(bf16 − fp32) | ∇θ error of bf16 | batch-gradient noise |", "|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        diff = ", ".join(f"{d:+.1e}" for d in r["firing_rate_difference_per_layer"])
        lines.append(f"| {r['run']} | {r['time_steps']} | {r['samples']} | {100 * r['accuracy_fp32']:.2f}% | "
                     f"{100 * r['accuracy_bf16']:.2f}% | {r['differing_predictions']} | {diff} | "
                     f"{r['gradient_error_bf16']:.1e} | {r['batch_gradient_noise']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories or checkpoint files")
    parser.add_argument("--batch", type=int, default=128, help="the gradient step's batch (default 128)")
    parser.add_argument("--eval-batch", type=int, default=500, help="evaluation batch (default 500)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "precision-eval.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report = {**run_header("cpu"), "command": " ".join(["python", *sys.argv]), "rows": []}
    for run in args.runs:
        report["rows"].append(measure(run, args.batch, args.eval_batch, args.seed))
        print(json.dumps({k: v for k, v in report["rows"][-1].items() if "per_layer" not in k}), flush=True)
    atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    atomic_write_text(Path(args.out).with_suffix(".md"), markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
