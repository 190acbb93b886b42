"""A training run in its directory: the loop, checkpoints after every epoch and on a stop request, exact resume."""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path
from typing import Any, Iterator, Optional

from .. import distributed
from ..training import Trainer, summarize
from .report import Report, epoch_warnings
from .rundir import RunDir


class StopRequest:
    """First Ctrl-C (or SIGTERM, as from a cluster's scheduler or torchrun shutting down) asks the
    loop to stop after the current step; a second one interrupts at once, except while the run's
    files are being written (``saving``): then it waits until they are complete."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self.deferred = False  # a second signal came while saving
        self._saving = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopRequest":
        self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested and self._saving:
            self.deferred = True
        elif self.requested:
            raise KeyboardInterrupt
        self.requested = True

    @contextlib.contextmanager
    def saving(self) -> Iterator[None]:
        """Within the block a second signal is held back; ``deferred`` tells whether one came."""
        self._saving = True
        try:
            yield
        finally:
            self._saving = False

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


class Interrupted(Exception):
    """Training stopped on request (Ctrl-C) after saving a checkpoint."""


class TrainingRun:
    """Runs ``trainer`` to its last epoch, keeping ``run_dir`` up to date: metrics after every
    epoch, the last checkpoint after every epoch and on a stop, the best one (highest validation
    accuracy), the summary at the end. With several processes, rank 0 alone writes."""

    def __init__(self, trainer: Trainer, run_dir: RunDir, config: dict[str, Any], report: Report):
        self.trainer, self.run_dir, self.config, self.report = trainer, run_dir, config, report
        self._main = trainer.context.is_main

    def save(self) -> None:
        """Write the last checkpoint; every process must call it (it gathers their RNG states)."""
        state = self.trainer.state_dict()
        if self._main:
            self.run_dir.save_checkpoint(state, self.config)
        distributed.barrier(self.trainer.context)  # nobody reads the file before it is complete

    def resume(self, loaded: Optional[tuple[Path, dict[str, Any], list[str]]] = None) -> None:
        """Restore the trainer from the last checkpoint (from the best one, an earlier epoch's,
        where the last cannot be used: the report says so). ``loaded``: what
        ``RunDir.load_for_resume`` returned, where the caller has read it already."""
        path, state, warnings = loaded or self.run_dir.load_for_resume(map_location=self.trainer.device)
        for message in warnings:
            self.report.line(f"warning: {message}")
        try:
            self.trainer.load_state_dict(state)
        except ValueError as error:
            raise ValueError(f"--resume: {path}: {error}") from None
        self.report.line(f"resumed from {path} at epoch {self.trainer.epoch + 1}, batch {self.trainer.batch}")

    @contextlib.contextmanager
    def _saving(self, stop: StopRequest) -> Iterator[None]:
        """Write the run's files with a second Ctrl-C held back; it interrupts once they are complete."""
        with stop.saving():
            yield
        if stop.deferred:
            trainer = self.trainer
            where = (f"epoch {trainer.epoch + 1}, batch {trainer.batch}" if trainer.batch
                     else f"the end of epoch {trainer.epoch}")
            raise Interrupted(f"interrupted while saving, at {where}, once the files were complete; checkpoint "
                              f"saved to {self.run_dir.last_checkpoint}; continue with --resume")

    def fit(self) -> dict[str, Any]:
        """Train from where the trainer is (its start, or where ``resume`` put it) to the last epoch;
        returns the summary.

        Raises:
            Interrupted: after Ctrl-C, once the checkpoint is saved.
        """
        trainer = self.trainer
        with StopRequest() as stop:
            with self._saving(stop):
                if self._main:
                    self.run_dir.path.mkdir(parents=True, exist_ok=True)
                # Rows of epochs after the checkpoint (a crash between the two writes, or a resume
                # from the best checkpoint) are dropped.
                rows = [row for row in self.run_dir.read_metrics() if row["epoch"] <= trainer.epoch]
                if self._main:
                    self.run_dir.write_metrics(rows)
            while not trainer.done:
                with self.report.epoch(trainer):
                    finished = trainer.train_epoch(should_stop=lambda: stop.requested, on_batch=self.report.batch)
                if not finished:
                    with self._saving(stop):
                        self.save()
                    raise Interrupted(f"stopped at epoch {trainer.epoch + 1}, batch {trainer.batch}; checkpoint "
                                      f"saved to {self.run_dir.last_checkpoint}; continue with --resume")
                row = trainer.end_epoch()
                if warnings := epoch_warnings(row):  # a run that cannot learn says so, in the log and the metrics
                    row["warnings"] = warnings
                self.report.epoch_done(row)
                rows.append(row)
                with self._saving(stop):
                    if self._main:
                        self.run_dir.write_metrics(rows)
                    self.save()
                    if row.get("is_best") and self._main:
                        self.run_dir.keep_last_as_best()
            summary = summarize(rows)
            with self._saving(stop):
                if self._main:
                    self.run_dir.write_summary(summary)
        return summary
