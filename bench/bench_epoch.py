"""Training epochs of `implicit-snn train` on F400 / Fashion-MNIST: this tree's IDE (and BPTT)
against another revision's IDE, alternating in rounds in one run.

Each round trains, one after the other, one epoch of every configuration from scratch (seed 0,
the paper's settings, 55,000 training images with the default validation split), each as its own
`python -m implicit_snn train` process; the baseline revision runs from a temporary git worktree.
Reported: per configuration the median over rounds of the epoch's training seconds (from the
run's metrics.jsonl) and its test accuracy, and the speed-up against the baseline. Writes
bench/results/epoch-<device>.{json,md}.

    python bench/bench_epoch.py --baseline e6cbb96 [--rounds 2] [--threads 1] [--methods ide bptt]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from implicit_snn.app.rundir import RunDir

from common import run_header, write_results

ROOT = Path(__file__).resolve().parent.parent


def train_one_epoch(tree: Path, out: Path, threads: int, extra: list[str]) -> dict:
    """One epoch of `implicit-snn train` with the library of ``tree``; its metrics row."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    command = [sys.executable, "-m", "implicit_snn", "train", "--epochs", "1", "--threads", str(threads),
               "--out", str(out), "--overwrite", *extra]
    subprocess.run(command, cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL)
    return RunDir(out).read_metrics()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="git revision whose IDE epoch is the reference")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", nargs="+", choices=["ide", "bptt"], default=["ide", "bptt"])
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    scratch = Path(tempfile.mkdtemp(prefix="bench-epoch-"))
    base_tree = scratch / "baseline"
    subprocess.run(["git", "worktree", "add", "--detach", str(base_tree), args.baseline], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base_rev = subprocess.run(["git", "rev-parse", "--short", args.baseline], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout.strip()
    head_rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout.strip()
    configs = {f"IDE@{base_rev}": (base_tree, [])}
    for method in args.methods:
        configs[f"{method.upper()}@{head_rev}"] = (ROOT, ["--method", method])
    results: dict[str, list[dict]] = {name: [] for name in configs}
    try:
        for round_index in range(args.rounds):
            for name, (tree, extra) in configs.items():
                row = train_one_epoch(tree, scratch / name.replace("@", "-"), args.threads, extra)
                results[name].append({"train_seconds": row["train_seconds"], "test_acc": row.get("test_acc"),
                                      "backward_evals_mean": row.get("backward_evals_mean")})
                print(f"round {round_index + 1}: {name} {row['train_seconds']:.1f} s, test {row.get('test_acc')}")
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(base_tree)], cwd=ROOT, check=False)
        shutil.rmtree(scratch, ignore_errors=True)
    seconds = {name: statistics.median(r["train_seconds"] for r in rows) for name, rows in results.items()}
    base = seconds[f"IDE@{base_rev}"]
    report = {**run_header("cpu"), "command": " ".join(sys.argv), "baseline": base_rev, "head": head_rev,
              "threads": args.threads, "rounds": args.rounds, "per_round": results, "median_train_seconds": seconds,
              "speedup_vs_baseline": {name: base / s for name, s in seconds.items()}}
    lines = [f"# F400 training epoch, `implicit-snn train` ({report['device_name']}, torch {report['torch']}, "
             f"{report['date']})", "",
             f"One epoch from scratch (seed 0, paper settings, 55,000 images), {args.threads} thread(s), "
             f"configurations alternating over {args.rounds} rounds, median train seconds.", "",
             f"Command: `{report['command']}`", "",
             "| configuration | epoch s | speed-up vs baseline | test acc after 1 epoch | backward VJPs / step |",
             "|---|---|---|---|---|"]
    for name, rows in results.items():
        acc = rows[-1]["test_acc"]
        vjps = rows[-1]["backward_evals_mean"]
        lines.append(f"| {name} | {seconds[name]:.1f} | {base / seconds[name]:.2f}× | "
                     f"{'—' if acc is None else f'{100 * acc:.2f}%'} | {'—' if vjps is None else f'{vjps:.1f}'} |")
    write_results(args.out, "epoch-cpu", report, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
