"""What a training run shows: a progress bar on a terminal, one line per epoch everywhere."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from ..training import Trainer


class Report:
    """Prints a run's progress to ``console`` (nothing on processes other than rank 0)."""

    def __init__(self, console: Console, *, enabled: bool = True):
        self.console = console
        self.enabled = enabled
        self._progress: Optional[Progress] = None
        self._task: Optional[TaskID] = None

    def line(self, text: str) -> None:
        """One message, never wrapped: a log file keeps one line per message."""
        if self.enabled:
            self.console.print(text, soft_wrap=True, highlight=False)

    @contextlib.contextmanager
    def epoch(self, trainer: Trainer) -> Iterator[None]:
        """A transient progress bar over the current epoch's batches (on a terminal only)."""
        if not (self.enabled and self.console.is_terminal):
            yield
            return
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[stats]}"), TimeRemainingColumn(),
                      console=self.console, transient=True) as progress:
            self._progress = progress
            self._task = progress.add_task(f"epoch {trainer.epoch + 1}/{trainer.epochs}",
                                           total=trainer.batches_per_epoch, completed=trainer.batch, stats="")
            try:
                yield
            finally:
                self._progress = self._task = None

    def batch(self, trainer: Trainer) -> None:
        """Advance the progress bar after one step."""
        if self._progress is None:
            return
        t = trainer.totals
        done = max(t.samples, 1)  # none yet when the first steps were skipped
        self._progress.update(self._task, advance=1, stats=f"loss {t.loss / done:.4f} acc {t.correct / done:.2%} "
                                                           f"{t.samples / max(t.seconds, 1e-9):.0f} img/s")

    def epoch_done(self, row: dict[str, Any]) -> None:
        self.line(format_row(row))
        for warning in row.get("warnings", []):
            self.line(f"warning: epoch {row['epoch']}: {warning}")


#: A mean firing rate this close to 0 or 1 over a whole epoch means the neurons are stuck.
STUCK_RATE = 1e-4


def epoch_warnings(row: dict[str, Any]) -> list[str]:
    """What in an epoch's metrics row points at a run that cannot learn, and what to try."""
    rate = row.get("firing_rate")
    if rate is None:
        return []
    if rate < STUCK_RATE:
        return [f"the mean firing rate is {rate:.2g}: the neurons (almost) never fire, so no gradient reaches the "
                "weights; try a lower --vth or check the input scale"]
    if rate > 1 - STUCK_RATE:
        return [f"the mean firing rate is {rate:.6g}: the neurons (almost) always fire, so no gradient reaches the "
                "weights; try a higher --vth"]
    return []


def format_row(row: dict[str, Any]) -> str:
    """One line per epoch for the console."""
    parts = [f"epoch {row['epoch']}", f"lr {row['lr']:.4g}", f"train loss {row['train_loss']:.4f}",
             f"acc {row['train_acc']:.2%}"]
    if "val_acc" in row:
        parts.append(f"val {row['val_acc']:.2%}" + (" *" if row.get("is_best") else ""))
    if "test_acc" in row:
        parts.append(f"test {row['test_acc']:.2%}")
    if "backward_evals_mean" in row:
        if "BUDGET" in row.get("backward_status", {}):
            # A fixed-budget backward did what it was asked: say so, with the residual it reached.
            spent = f"fixed budget, rel. residual {row['backward_rel_residual_mean']:.1e}"
        else:
            spent = f"{row['backward_converged_fraction']:.0%} converged"
        parts.append(f"backward {row['backward_evals_mean']:.1f} VJPs, {spent}"
                     + (f", {row['backward_ms_mean']:.1f} ms" if "backward_ms_mean" in row else ""))
    if "forward_status" in row:
        parts.append("forward " + ", ".join(f"{k} {v}" for k, v in sorted(row["forward_status"].items())))
    if "firing_rate" in row:
        parts.append(f"rate {row['firing_rate']:.3f}")
    if row.get("skipped_steps"):
        parts.append(f"skipped {row['skipped_steps']} non-finite step{'s' if row['skipped_steps'] > 1 else ''}")
    parts.append(f"{row['train_seconds']:.1f}s ({row['train_images_per_s']:.0f} img/s)")
    return " | ".join(parts)


