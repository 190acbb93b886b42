"""Seed statistics of finished training runs: mean, standard deviation and range per protocol.

Reads each run directory's ``summary.json`` (written by ``implicit-snn train``) and prints one
row per run and, per group of runs, the mean ± sample standard deviation of the final-epoch,
validation-chosen and best-epoch test accuracies, the fraction of runs reaching a bar, and the
median epoch time. Groups are given as ``NAME=DIR,DIR,...``. ``--paired A:B`` compares two
groups run by run (the same seeds in the same order): the mean difference B − A per protocol,
its standard error, and in how many pairs B is ahead.

    python scripts/summarize_runs.py "val 5000=docs/runs/a,docs/runs/b" "all 60000=docs/runs/c" \
        [--bar final=0.8969 --bar best_epoch=0.8997] [--paired "val 5000:all 60000"] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from implicit_snn.app.rundir import RunDir
from implicit_snn.files import atomic_write_text

PROTOCOLS = {"final": "final_test_acc", "val_chosen": "val_chosen_test_acc", "best_epoch": "best_epoch_test_acc",
             "last10_mean": "last10_mean_test_acc"}


def read_summary(run_dir: Path) -> dict:
    """The run's ``summary.json``; a missing one (unfinished run) is a clear error."""
    run = RunDir(run_dir)
    if not run.summary_file.is_file():
        raise SystemExit(f"error: {run.summary_file} not found: is the run finished?")
    return run.read_summary()


def mean_backward_vjps(run_dir: Path) -> float | None:
    """Backward VJPs per training step, averaged over the run's epochs (None without that metric)."""
    rows = RunDir(run_dir).read_metrics()
    values = [row["backward_evals_mean"] for row in rows if row.get("backward_evals_mean") is not None]
    return statistics.fmean(values) if values else None


def group_stats(summaries: list[dict], bars: dict[str, float]) -> dict[str, dict]:
    """Per protocol: n, mean, std (sample; 0 for one run), min, max and how many runs reach its bar."""
    out: dict[str, dict] = {}
    for name, key in PROTOCOLS.items():
        values = [s[key] for s in summaries if s.get(key) is not None]
        if not values:
            continue
        row = {"n": len(values), "mean": statistics.fmean(values),
               "std": statistics.stdev(values) if len(values) > 1 else 0.0, "min": min(values), "max": max(values)}
        if name in bars:
            row["reaching_bar"] = sum(v >= bars[name] for v in values)
        out[name] = row
    return out


def paired_differences(first: list[dict], second: list[dict]) -> dict[str, dict]:
    """Per protocol, over run pairs (first[i], second[i]): n, mean and sample std of second − first,
    the standard error of the mean, and how many pairs have second > first."""
    if len(first) != len(second):
        raise SystemExit(f"error: --paired needs groups of equal size, got {len(first)} and {len(second)} runs")
    out: dict[str, dict] = {}
    for name, key in PROTOCOLS.items():
        diffs = [b[key] - a[key] for a, b in zip(first, second) if a.get(key) is not None and b.get(key) is not None]
        if not diffs:
            continue
        std = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
        out[name] = {"n": len(diffs), "mean": statistics.fmean(diffs), "std": std, "sem": std / len(diffs) ** 0.5,
                     "second_ahead": sum(d > 0 for d in diffs)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("groups", nargs="+", metavar="NAME=DIR,DIR", help="a named group of run directories")
    parser.add_argument("--bar", action="append", default=[], metavar="PROTOCOL=ACC",
                        help=f"a bar to count runs against; protocols: {', '.join(PROTOCOLS)}")
    parser.add_argument("--paired", action="append", default=[], metavar="A:B",
                        help="compare groups A and B run by run (same seeds, same order): B − A")
    parser.add_argument("--json", help="also write the statistics to this file")
    args = parser.parse_args()
    bars = {}
    for text in args.bar:
        name, _, value = text.partition("=")
        if name not in PROTOCOLS or not value:
            raise SystemExit(f"error: --bar wants PROTOCOL=ACC with PROTOCOL one of {', '.join(PROTOCOLS)}, got {text!r}")
        bars[name] = float(value)
    report = {}
    for group in args.groups:
        name, _, dirs = group.partition("=")
        if not dirs:
            raise SystemExit(f"error: a group is NAME=DIR,DIR,..., got {group!r}")
        runs = {d: read_summary(Path(d)) for d in dirs.split(",")}
        print(f"## {name}")
        print("| run | final | chosen on validation | best epoch | last-10 mean | s/epoch (median) | VJPs/step |")
        print("|---|---|---|---|---|---|---|")
        for d, s in runs.items():
            chosen = (f"{s['val_chosen_test_acc']:.2%} (ep. {s['val_chosen_epoch']})"
                      if s.get("val_chosen_test_acc") is not None else "—")
            seconds = s.get("train_seconds_per_epoch_median")  # absent from imported reference logs
            print(f"| {Path(d).name} | {s['final_test_acc']:.2%} | {chosen} | {s['best_epoch_test_acc']:.2%} "
                  f"(ep. {s['best_epoch']}) | {s['last10_mean_test_acc']:.2%} | "
                  f"{'—' if seconds is None else f'{seconds:.1f}'} | "
                  f"{'—' if (vjps := mean_backward_vjps(Path(d))) is None else f'{vjps:.1f}'} |")
        stats = group_stats(list(runs.values()), bars)
        for protocol, row in stats.items():
            reach = f", {row['reaching_bar']}/{row['n']} reach {bars[protocol]:.2%}" if "reaching_bar" in row else ""
            print(f"- {protocol}: {row['mean']:.2%} ± {row['std']:.2%} (n={row['n']}, "
                  f"range {row['min']:.2%}–{row['max']:.2%}){reach}")
        print()
        report[name] = {"runs": list(runs), "stats": stats, "summaries": list(runs.values())}
    pairs = {}
    for text in args.paired:
        first, _, second = text.partition(":")
        if first not in report or second not in report:
            raise SystemExit(f"error: --paired wants A:B with A and B group names ({', '.join(report)}), got {text!r}")
        diffs = paired_differences(report[first]["summaries"], report[second]["summaries"])
        print(f"## paired: {second} − {first}")
        for protocol, row in diffs.items():
            print(f"- {protocol}: {row['mean']:+.2%} ± {row['sem']:.2%} (s.e.m.; std {row['std']:.2%}, n={row['n']}), "
                  f"{second} ahead in {row['second_ahead']}/{row['n']}")
        print()
        pairs[f"{second} - {first}"] = diffs
    for group in report.values():
        del group["summaries"]
    if args.json:
        atomic_write_text(args.json, json.dumps({"bars": bars, "groups": report, "paired": pairs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
