"""A training run in its directory: the loop, checkpoints after every epoch and on a stop request, exact resume."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path
from typing import Any, Iterator, NoReturn, Optional

from .. import distributed, interrupt
from ..interrupt import StopRequested
from ..metrics import summarize
from ..training import Trainer
from .report import Report, epoch_warnings
from .rundir import RunDir


class StopRequest:
    """First Ctrl-C (or SIGTERM, as from a cluster's scheduler or torchrun shutting down) asks the
    run to stop: the trainer abandons the step or evaluation in progress at its next check (in the
    simulation's time loop; ``implicit_snn.interrupt``), or stops after the current step. A second
    one waits while the run's files are being written (``saving``) until they are complete; at any
    other time it ends the process at once (``SystemExit(130)``) with one line on stderr saying
    which checkpoint is whole, no traceback. ``run_dir``: the run's folder, for that line.

    ``started`` False: the run is being set up (data, model), there is nothing to save yet, and
    the first signal already ends the process so; ``TrainingRun.fit`` sets it."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, run_dir: Optional[RunDir] = None, *, started: bool = True) -> None:
        self.run_dir = run_dir
        self.started = started
        self.deferred = False  # a second signal came while saving
        self._saving = False
        self._exiting = False
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        """Whether a stop was asked for (the library's loops read the same flag)."""
        return interrupt.stop_requested()

    def __enter__(self) -> "StopRequest":
        interrupt.clear_stop()
        self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def _handle(self, signum, frame) -> None:
        if self._exiting:  # a third signal while unwinding must not interrupt the clean-up
            return
        if self.requested and self._saving:
            self.deferred = True
        elif self.requested:
            self._exit_now("interrupted again")
        elif not self.started:
            self._exit_now("interrupted before training started")
        interrupt.request_stop()

    def _exit_now(self, what: str) -> NoReturn:
        self._exiting = True
        run = self.run_dir
        kept = next((p for p in ((run.last_checkpoint, run.best_checkpoint) if run else ()) if p.exists()), None)
        state = (f"the last checkpoint {kept} is whole; continue with --resume" if kept is not None
                 else "no checkpoint was saved yet")
        # os.write, not print: the signal may have arrived in the middle of a buffered write.
        os.write(2, f"{what}: exiting now; {state}\n".encode())
        raise SystemExit(130)

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
        interrupt.clear_stop()


class Interrupted(Exception):
    """Training stopped on request (Ctrl-C) after saving a checkpoint."""


class TrainingRun:
    """Runs ``trainer`` to its last epoch, keeping ``run_dir`` up to date: metrics after every
    epoch, the last checkpoint after every epoch and on a stop, the best one (highest validation
    accuracy), the summary at the end. With several processes, rank 0 alone writes.

    ``tensorboard``: a folder for TensorBoard event files (``tensorboard_log``), written after
    each epoch's checkpoint, or None."""

    def __init__(self, trainer: Trainer, run_dir: RunDir, config: dict[str, Any], report: Report, *,
                 tensorboard: Optional[Path] = None):
        self.trainer, self.run_dir, self.config, self.report = trainer, run_dir, config, report
        self._main = trainer.context.is_main
        self._resumed_rows: Optional[list[dict[str, Any]]] = None  # the metrics a resumed run continues
        self.tensorboard = tensorboard
        self._board: Any = None  # the open ``tensorboard_log.EpochBoard`` while ``fit`` runs

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
        # Read now, before anything is written: a metrics file that cannot be continued changes nothing.
        rows, warnings = self.run_dir.metrics_for_resume(self.trainer.epoch)
        for message in warnings:
            self.report.line(f"warning: {message}")
        self._resumed_rows = rows
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

    def _stop(self, stop: StopRequest, where: str) -> NoReturn:
        """Save the last checkpoint (the trainer is as after its last completed step) and raise ``Interrupted``."""
        with self._saving(stop):
            self.save()
        raise Interrupted(f"stopped {where}; checkpoint saved to {self.run_dir.last_checkpoint}; "
                          "continue with --resume")

    def fit(self, stop: Optional[StopRequest] = None) -> dict[str, Any]:
        """Train from where the trainer is (its start, or where ``resume`` put it) to the last epoch;
        returns the summary. ``stop``: the signal handling already installed by the caller (else
        installed for the call).

        Raises:
            Interrupted: after Ctrl-C or SIGTERM, once the checkpoint is saved.
        """
        with contextlib.ExitStack() as stack:
            if stop is None:
                stop = stack.enter_context(StopRequest(self.run_dir))
            stop.started = True  # from here a first signal stops at a step boundary with a checkpoint
            stack.callback(self._close_board)
            return self._fit(stop)

    def _open_board(self, rows: list[dict[str, Any]]) -> None:
        """Open the TensorBoard folder (rank 0), writing the kept rows it lacks."""
        if self.tensorboard is None or not self._main:
            return
        from .tensorboard_log import EpochBoard

        self._board = EpochBoard(self.tensorboard, rows, self.trainer.epoch)
        filled = [row["epoch"] for row in self._board.filled]
        if filled:  # epochs trained by a session without --tensorboard, or before a crash
            epochs = f"epoch {filled[0]}" if len(filled) == 1 else f"epochs {filled[0]}–{filled[-1]}"
            hidden = (f" (earlier events from step {self._board.purged_from} on are hidden)"
                      if self._board.purged_from is not None else "")
            self.report.line(f"tensorboard: {epochs} written from {self.run_dir.METRICS}{hidden}")
        self.report.line(f"tensorboard: {self.tensorboard} (tensorboard --logdir {self.tensorboard})")

    def _close_board(self) -> None:
        if self._board is not None:
            self._board.close()
            self._board = None

    def _fit(self, stop: StopRequest) -> dict[str, Any]:
        trainer = self.trainer
        requested = lambda: stop.requested  # noqa: E731
        with self._saving(stop):
            if self._main:
                self.run_dir.path.mkdir(parents=True, exist_ok=True)
            # Rows of epochs after the checkpoint (a crash between the two writes, or a resume
            # from the best checkpoint) are dropped.
            rows = (self._resumed_rows if self._resumed_rows is not None else
                    [row for row in self.run_dir.read_metrics() if row["epoch"] <= trainer.epoch])
            if self._main:
                self.run_dir.write_metrics(rows)
            self._open_board(rows)
        while not trainer.done:
            with self.report.epoch(trainer):
                finished = trainer.train_epoch(should_stop=requested, on_batch=self.report.batch)
            if not finished:
                self._stop(stop, f"at epoch {trainer.epoch + 1}, batch {trainer.batch}")
            try:
                row = trainer.end_epoch(should_stop=requested)
            except StopRequested:
                self._stop(stop, f"during the evaluation at the end of epoch {trainer.epoch + 1} (its batches are "
                                 "trained; --resume evaluates it again)")
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
                if self._board is not None:  # after the checkpoint: never an epoch a resume trains again
                    self._board.write(row)
            # A request that came while the epoch's files were written: they are the checkpoint.
            if not trainer.done and distributed.any_across(stop.requested, trainer.context, trainer.device):
                raise Interrupted(f"stopped at the end of epoch {trainer.epoch}; checkpoint saved to "
                                  f"{self.run_dir.last_checkpoint}; continue with --resume")
        summary = summarize(rows)
        with self._saving(stop):
            if self._main:
                self.run_dir.write_summary(summary)
        return summary
