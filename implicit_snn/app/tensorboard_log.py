"""``implicit-snn train --tensorboard [DIR]``: every epoch's metrics row as TensorBoard scalars.

Needs the ``tensorboard`` package (``pip install -e ".[tensorboard]"``); without it the flag is a
one-line usage error before anything is made. The global step is the epoch (1, 2, …); the tags
(``scalars`` makes them from a ``metrics.jsonl`` row):

* ``backward/…``: the fields ``backward_*`` without that prefix (``backward/evals_mean``: VJPs
  per step, ``backward/rel_residual_mean``, ``backward/converged_fraction``, ``backward/ms_mean``)
  and the solver statuses, ``backward/status/STATUS`` (batches that ended so);
* ``activity/…``: ``activity/firing_rate`` (the network's mean) and, per layer N (1-based),
  ``activity/layerN/firing_rate``, ``activity/layerN/silent``, ``activity/layerN/saturated``
  (the row's ``*_per_layer`` lists);
* ``forward_status/STATUS`` (the analytic producer's forward solver);
* every other number under its own name (``train_loss``, ``train_acc``, ``val_acc``,
  ``test_acc``, ``lr``, ``skipped_steps``, ``train_seconds``, ``eval_seconds``, …), ``is_best``
  as 1. Text (``warnings``) is not written; ``epoch`` is the step.

Resume: the writer writes an epoch only after its checkpoint is saved (and nothing of an epoch
stopped midway), so a resume from the last checkpoint never trains again an epoch the event
files hold. On opening, the event files already in the folder are
read back (TensorBoard's own reader) and only the kept metrics rows whose scalars are not all
there are written, from the first such epoch on: after a crash between the checkpoint and the
event file, or a resumed session that ran without ``--tensorboard``, the missing epochs are
filled in from ``metrics.jsonl``. Where the folder holds steps at or after that first epoch (a
gap, or epochs after a damaged last checkpoint that a resume from the best one trains again),
the writer starts with ``purge_step`` = that epoch: TensorBoard hides the older events of those
steps, so every step shows once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from .errors import UsageError

#: How the missing package is reported (one line, exit status 2).
MISSING = ("--tensorboard needs the tensorboard package, which is not installed: "
           "pip install 'implicit-snn[tensorboard]' (or pip install tensorboard)")

EVENT_FILES = "events.out.tfevents.*"


def check_available() -> None:
    """``UsageError`` (``MISSING``) where ``torch.utils.tensorboard`` cannot be imported."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise UsageError(MISSING) from None


def log_dir(option: Optional[str], run_dir: str | Path) -> Optional[Path]:
    """The folder ``--tensorboard`` names: None without the flag, ``RUN_DIR/tensorboard`` without DIR."""
    if option is None:
        return None
    return Path(option) if option else Path(run_dir) / "tensorboard"


def event_files(folder: Path) -> list[Path]:
    """The event files directly in ``folder`` (TensorBoard reads them in this order)."""
    return sorted(folder.glob(EVENT_FILES)) if folder.is_dir() else []


def check_new(folder: Path) -> None:
    """Refuse (``UsageError``) to start a new run's curves in a folder that holds event files already."""
    found = event_files(folder)
    if found:
        raise UsageError(f"--tensorboard: {folder} already holds event files ({found[0].name}, …) of another run; "
                         "pass --resume to continue that run, --overwrite to start afresh (it deletes them), or "
                         "--tensorboard with another folder")


def clear(folder: Path) -> None:
    """Delete the event files in ``folder`` (a run started afresh with ``--overwrite``); nothing else."""
    for path in event_files(folder):
        path.unlink(missing_ok=True)


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return None


def _put(out: dict[str, float], tag: str, value: Any) -> None:
    """``value`` under ``tag``: a number, or a dict of them flattened to ``tag/KEY``; text is left out."""
    if isinstance(value, dict):
        for key, inner in value.items():
            _put(out, f"{tag}/{key}", inner)
        return
    number = _number(value)
    if number is not None:
        out[tag] = number


def _tag(key: str) -> str:
    if key.startswith("backward_"):
        return "backward/" + key[len("backward_"):]
    if key == "firing_rate":
        return "activity/firing_rate"
    return key


PER_LAYER = "_per_layer"


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """The TensorBoard scalars of one metrics row, by tag (see the module docstring)."""
    out: dict[str, float] = {}
    for key, value in row.items():
        if key == "epoch":
            continue
        if key.endswith(PER_LAYER) and isinstance(value, list):
            name = key[:-len(PER_LAYER)]
            for layer, number in enumerate(value, start=1):
                _put(out, f"activity/layer{layer}/{name}", number)
            continue
        _put(out, _tag(key), value)
    return out


def logged_steps(folder: Path) -> dict[str, set[int]]:
    """The steps of every scalar tag in ``folder``'s event files, as TensorBoard shows them
    (with its purges applied)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not event_files(folder):
        return {}
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0: keep every point
    accumulator.Reload()
    return {tag: {event.step for event in accumulator.Scalars(tag)} for tag in accumulator.Tags()["scalars"]}


def first_missing(rows: list[dict[str, Any]], logged: dict[str, set[int]], epochs: int) -> int:
    """The first epoch from which ``rows`` (those of epochs 1..``epochs``) must be written: that of
    the first row with a scalar not logged at its epoch, else ``epochs + 1``."""
    for row in sorted(rows, key=lambda r: r["epoch"]):
        if any(row["epoch"] not in logged.get(tag, ()) for tag in scalars(row)):
            return row["epoch"]
    return epochs + 1


class EpochBoard:
    """The run's TensorBoard event files, written one epoch at a time (by rank 0 alone)."""

    def __init__(self, folder: Path, rows: list[dict[str, Any]], epochs: int):
        """Open ``folder`` for a run that has trained ``epochs`` epochs, whose metrics rows are
        ``rows``; writes the rows the folder lacks (see the module docstring)."""
        from torch.utils.tensorboard import SummaryWriter

        self.folder = Path(folder)
        logged = logged_steps(self.folder)
        start = first_missing(rows, logged, epochs)
        stale = any(step >= start for steps in logged.values() for step in steps)
        # flush_secs: the writer thread's own flushes; ``write`` flushes every epoch anyway.
        self.writer = SummaryWriter(str(self.folder), purge_step=start if stale else None, flush_secs=30)
        self.purged_from = start if stale else None  # TensorBoard hides the older events from this step on
        self.filled = [row for row in sorted(rows, key=lambda r: r["epoch"]) if row["epoch"] >= start]
        for row in self.filled:  # epochs trained but not (all) logged yet
            self.write(row, flush=False)
        self.writer.flush()

    def write(self, row: dict[str, Any], *, flush: bool = True) -> None:
        """One epoch's row, at step ``row["epoch"]``."""
        for tag, value in scalars(row).items():
            self.writer.add_scalar(tag, value, global_step=row["epoch"])
        if flush:
            self.writer.flush()

    def close(self) -> None:
        self.writer.close()
