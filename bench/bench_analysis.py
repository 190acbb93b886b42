"""What `implicit-snn analyze` costs: the wall time of each section on a trained checkpoint.

Runs the command in this process, one section at a time and once all together, several rounds,
and reports the median wall time of each (the whole command: loading the checkpoint and the
data, the measurement, writing the report). The target of issue 15: the energy and activity
report of a trained F400 on the whole test set in under 2 minutes on a CPU.

    python bench/bench_analysis.py docs/runs/repro-f400-lif-seed0 --samples 10000 --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import run_header, write_results  # noqa: E402
from implicit_snn.app.cli import main as cli  # noqa: E402

# name: (sections, in a fresh process)
CASES = {"activity": (["activity"], False), "energy": (["energy"], False),
         "activity+energy": (["activity", "energy"], False),
         "activity+energy, fresh process": (["activity", "energy"], True)}


def time_analyze(checkpoint: str, sections: list[str], samples: int, threads: int, out: Path,
                 fresh: bool = False) -> float:
    """Seconds of one ``analyze`` command (its console output discarded), in this process or, with
    ``fresh``, as a new ``python -m implicit_snn`` process (imports and all, as a user runs it)."""
    argv = ["analyze", checkpoint, "--sections", *sections, "--samples", str(samples), "--threads", str(threads),
            "--out", str(out), "--no-plots"]
    start = time.perf_counter()
    if fresh:
        subprocess.run([sys.executable, "-m", "implicit_snn", *argv], check=True, stdout=subprocess.DEVNULL)
    else:
        with contextlib.redirect_stdout(io.StringIO()):
            assert cli(argv) == 0
    return time.perf_counter() - start


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a run directory or checkpoint")
    parser.add_argument("--samples", type=int, default=10000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="bench/results", help="folder for analysis-cost-cpu.{json,md}")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    seconds: dict[str, list[float]] = {name: [] for name in CASES}
    with tempfile.TemporaryDirectory() as scratch:
        for _ in range(args.rounds):  # alternating the cases in rounds: the machine's speed drifts
            for name, (sections, fresh) in CASES.items():
                seconds[name].append(time_analyze(args.checkpoint, sections, args.samples, args.threads, Path(scratch),
                                                  fresh))
    report = {**run_header("cpu"), "checkpoint": args.checkpoint, "samples": args.samples, "threads": args.threads,
              "rounds": args.rounds, "seconds": seconds,
              "median_seconds": {name: statistics.median(times) for name, times in seconds.items()}}
    lines = [f"# `implicit-snn analyze` wall time, {args.checkpoint}, {args.samples} samples",
             "", f"{report['device_name']}, torch {report['torch']}, {report['date']}; median of {args.rounds} "
             "rounds (the whole command: checkpoint, data, measurement, report).", "",
             "| sections | median s | all rounds s |", "|---|---|---|"]
    for name, times in seconds.items():
        lines.append(f"| {name} | {statistics.median(times):.1f} | {', '.join(f'{t:.1f}' for t in times)} |")
    write_results(args.out, "analysis-cost-cpu", report, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
