"""Turn a reference-code training log into a run directory that ``summarize_runs.py`` reads.

The reference implementation (IDE-FSNN) logs one tab-separated line per epoch under the header
``Learning Rate, Train Loss, Valid Loss, Train Acc., Valid Acc.`` (its "Valid" is the test set;
accuracies in percent). This writes ``metrics.jsonl`` (one object per epoch, accuracies as
fractions, as ``implicit-snn train`` writes them) and ``summary.json`` with the final-epoch,
best-epoch and last-10 mean test accuracies, so that both codes' runs go through the same
statistics.

    python scripts/import_reference_log.py /path/to/log.txt docs/runs/reference-f400-lif-seed1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from implicit_snn.app.rundir import RunDir

COLUMNS = ("lr", "train_loss", "test_loss", "train_acc", "test_acc")


def read_log(path: Path) -> list[dict]:
    """The epochs of a reference ``log.txt``, as metric rows."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if not lines or not lines[0].startswith("Learning Rate"):
        raise SystemExit(f"error: {path} does not start with the reference log's header 'Learning Rate\\t...'")
    rows = []
    for epoch, line in enumerate(lines[1:], start=1):
        values = [float(v) for v in line.split("\t")]
        if len(values) != len(COLUMNS):
            raise SystemExit(f"error: {path} line {epoch + 1} has {len(values)} columns, expected {len(COLUMNS)}")
        row = {"epoch": epoch, **dict(zip(COLUMNS, values))}
        row["train_acc"] = round(row["train_acc"] / 100, 8)  # percent with 6 decimals, as a fraction
        row["test_acc"] = round(row["test_acc"] / 100, 8)
        rows.append(row)
    return rows


def summary(rows: list[dict]) -> dict:
    """Final, best-epoch and last-10 mean test accuracy (the keys ``implicit-snn train`` uses)."""
    best = max(rows, key=lambda r: (r["test_acc"], -r["epoch"]))
    last10 = rows[-10:]
    return {"epochs": len(rows), "final_test_acc": rows[-1]["test_acc"], "best_epoch": best["epoch"],
            "best_epoch_test_acc": best["test_acc"],
            "last10_mean_test_acc": sum(r["test_acc"] for r in last10) / len(last10)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("log", type=Path, help="the reference run's log.txt")
    parser.add_argument("out", type=Path, help="run directory to write")
    args = parser.parse_args()
    rows = read_log(args.log)
    if not rows:
        raise SystemExit(f"error: {args.log} holds no epochs")
    run = RunDir(args.out)
    run.write_metrics(rows)
    run.write_summary(summary(rows))
    print(json.dumps(summary(rows)))


if __name__ == "__main__":
    main()
