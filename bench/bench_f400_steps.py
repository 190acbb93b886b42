"""F400 on Fashion-MNIST: a few hundred SGD steps with the paper's settings, then the test accuracy.

LIF λ=0.95, T=5, Vth 2, Broyden with at most 30 iterations (tol 1e-6), dropout 0.2, SGD lr 0.05,
momentum 0.9, weight decay 5e-4, batch 128, seed 0, the full 60,000 training images.
Also measures the IF simulation's distance to the fixed point of f as T grows, on the trained
network. Writes bench/results/f400-steps-<device>.{json,md}.

    python bench/bench_f400_steps.py [--steps 300] [--device cpu]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import models
from implicit_snn import producers
from implicit_snn.data import BatchLoader, load_dataset
from implicit_snn.training import evaluate

from common import run_header, write_results


def fixed_point_distance(model, x, steps: int) -> float:
    """Mean ‖a[T] − f(a[T])‖ / ‖a[T]‖ of the IF simulation (eval mode)."""
    eq = producers.get_producer("if", time_steps=steps)(model.network, x)
    with torch.no_grad():
        fa = model.network.fixed_point_map(eq.a, *eq.f_args)
    return float(((eq.a - fa).norm(dim=1) / eq.a.norm(dim=1).clamp_min(1e-12)).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--data-root", default=None, help="folder with the Fashion-MNIST IDX files")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    train = load_dataset("fashion-mnist", "train", root=args.data_root)
    test = load_dataset("fashion-mnist", "test", root=args.data_root)
    model = models.build_model("f400").to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    loader = BatchLoader(train, 128, shuffle=True, generator=torch.Generator().manual_seed(0))
    evals, converged, step = [], [], 0
    start = time.perf_counter()
    while step < args.steps:
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            evals.append(model.last_backward.n_evals)
            converged.append(float(model.last_backward.converged.float().mean()))
            step += 1
            if step == args.steps:
                break
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    result = evaluate(model, test, batch_size=1000, device=device)
    model.eval()
    x_probe = test.inputs[:512].to(device)
    distances = {T: fixed_point_distance(model, x_probe, T) for T in (10, 100, 1000)}
    report = {
        **run_header(args.device),
        "steps": step, "train_seconds": seconds, "ms_per_step": 1e3 * seconds / step,
        "test_acc": result["acc"], "test_loss": result["loss"],
        "backward_evals_mean": sum(evals) / len(evals), "backward_converged_fraction": sum(converged) / len(converged),
        "if_fixed_point_distance": distances,
    }
    text = (f"# F400 on Fashion-MNIST, {step} SGD steps ({report['device_name']}, torch {report['torch']}, {report['date']})\n\n"
            f"- test accuracy {result['acc']:.2%} after {seconds:.1f} s of training ({report['ms_per_step']:.1f} ms/step)\n"
            f"- backward: {report['backward_evals_mean']:.1f} VJPs per step on average, "
            f"{report['backward_converged_fraction']:.1%} of samples converged to tol 1e-6\n"
            "- IF simulation of the trained network, mean ‖a[T] − f(a[T])‖/‖a[T]‖ on 512 test images: "
            + ", ".join(f"T={T}: {d:.2e}" for T, d in distances.items()) + "\n")
    write_results(args.out, f"f400-steps-{args.device}", report, text)


if __name__ == "__main__":
    main()
