"""The run directory: the one place that knows its file names and how each file is written."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from pathlib import Path
from typing import Any, Optional

import torch

from ..files import CorruptFile, atomic_file, atomic_torch_save, atomic_write_text, check_writable, read_jsonl, \
    verify_torch_file
from .errors import UsageError

CHECKPOINT_VERSION = 1


class CheckpointError(UsageError):
    """A checkpoint that cannot be used: missing, empty, truncated, damaged, or of another version.
    Its message names the file."""


class RunDir:
    """A training run's folder: ``config.json`` (the resolved settings), ``metrics.jsonl`` (one
    object per epoch), ``checkpoint-last.pt`` (every epoch, and on a stop), ``checkpoint-best.pt``
    (best validation accuracy) and ``summary.json``. Every file is written atomically: a failure
    (a full disk) leaves the previous file as it was, no temporary file, and a ``WriteError`` naming
    the file. A checkpoint carries a SHA-256 of itself, checked before it is loaded."""

    CONFIG = "config.json"
    METRICS = "metrics.jsonl"
    SUMMARY = "summary.json"
    LAST = "checkpoint-last.pt"
    BEST = "checkpoint-best.pt"
    DATA_FILES = "data-files.json"
    #: every file a training run writes, in the order a run creates them
    RUN_FILES = (CONFIG, DATA_FILES, METRICS, LAST, BEST, SUMMARY)
    #: held while a ``train`` runs here (``RunLock``); not a run file: never counted, cleared or copied
    LOCK = "train.lock"

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    @property
    def config_file(self) -> Path:
        return self.path / self.CONFIG

    @property
    def metrics_file(self) -> Path:
        return self.path / self.METRICS

    @property
    def summary_file(self) -> Path:
        return self.path / self.SUMMARY

    @property
    def last_checkpoint(self) -> Path:
        return self.path / self.LAST

    @property
    def best_checkpoint(self) -> Path:
        return self.path / self.BEST

    def existing_run_files(self) -> list[str]:
        """The names of the run files already present (a non-empty list: the folder holds a run)."""
        return [name for name in self.RUN_FILES if (self.path / name).exists()]

    def _temporary_files(self) -> list[Path]:
        """Temporary files of the run files left by a process killed mid-write (``atomic_file``'s)."""
        if not self.path.is_dir():
            return []
        return [p for name in self.RUN_FILES for p in self.path.glob(f".{name}.*.tmp")]

    def clear(self) -> None:
        """Delete the run files (to start afresh) and their leftover temporary files; anything else
        in the folder stays."""
        for name in self.RUN_FILES:
            (self.path / name).unlink(missing_ok=True)
        for path in self._temporary_files():
            path.unlink(missing_ok=True)

    def check_new_run(self) -> None:
        """Refuse (``UsageError``) to start a run here over the files of another: a run's, or the
        user's own files of the same names."""
        present = self.existing_run_files()
        if not present:
            return
        if self.LAST in present or self.BEST in present:
            raise UsageError(f"{self} already holds a run ({', '.join(present)}); pass --resume to continue it, "
                             "--overwrite to start afresh (it deletes those files), or --out for another directory")
        raise UsageError(f"{self} already holds {', '.join(present)} but no checkpoint (a run stopped before its "
                         "first epoch ended, or files of your own): there is nothing to resume; pass --overwrite to "
                         "start afresh (it deletes those files), or --out for another directory")

    def check_resumable(self) -> None:
        """Refuse (``UsageError``) ``--resume`` where there is no run, or no checkpoint to continue from."""
        if not self.config_file.exists():
            raise UsageError(f"--resume: {self} has no {self.CONFIG}; nothing to resume")
        if not (self.last_checkpoint.exists() or self.best_checkpoint.exists()):
            raise UsageError(f"--resume: {self} has no checkpoint (the run stopped before its first epoch ended); "
                             "there is nothing to resume: start it afresh with --overwrite")

    def check_writable(self) -> None:
        """``WriteError`` naming the folder if the run's files could not be written there (a file in
        the way, or a folder that takes no new files); creates nothing."""
        check_writable(self.path, folder=True)

    # -- settings, metrics, summary ----------------------------------------------------------
    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write_text(self.config_file, json.dumps(config, indent=2) + "\n")

    def read_config(self) -> dict[str, Any]:
        """The run's settings, older names translated (``config.translate_legacy``); a file that is
        not a JSON object, or whose old settings contradict each other, is a ``UsageError`` naming it."""
        from .config import translate_legacy

        try:
            config = json.loads(self.config_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            config = None
        if not isinstance(config, dict):
            raise UsageError(f"{self.config_file} is not a run's settings (a JSON object)")
        try:
            return translate_legacy(config, str(self.config_file))
        except ValueError as error:
            raise UsageError(str(error)) from None

    @property
    def data_files_file(self) -> Path:
        return self.path / self.DATA_FILES

    def write_data_files(self, files: list[dict[str, Any]]) -> None:
        """The data files the run read (path, content MD5, whether it was verified)."""
        atomic_write_text(self.data_files_file, json.dumps(files, indent=2) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        """The metrics rows so far ([] before the first epoch ends)."""
        return read_jsonl(self.metrics_file) if self.metrics_file.exists() else []

    def metrics_for_resume(self, epochs: int) -> tuple[list[dict[str, Any]], list[str]]:
        """The metrics rows a run resumed after ``epochs`` completed epochs continues (rows of later
        epochs, left by a resume from the best checkpoint, are dropped), and warnings to show.

        A last line cut short (a torn write, a copy cut off) is dropped with a warning where the
        whole rows before it hold every one of those epochs: the checkpoint has not trained what
        it described. Otherwise, and for a bad line that is not the last, a ``UsageError`` names
        the file and the line: the metrics of a trained epoch would be lost.
        """
        if not self.metrics_file.exists():
            return [], []
        try:
            text = self.metrics_file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UsageError(f"--resume: {self.metrics_file} is not UTF-8 text (damaged?); restore it, or start "
                             "afresh with --overwrite") from None
        lines = [(number, line) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
        rows: list[dict[str, Any]] = []
        warnings: list[str] = []
        for position, (number, line) in enumerate(lines):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            if isinstance(row, dict) and isinstance(row.get("epoch"), int):
                rows.append(row)
                continue
            have = {r["epoch"] for r in rows}
            missing = [epoch for epoch in range(1, epochs + 1) if epoch not in have]
            if position == len(lines) - 1 and not missing:
                found = re.match(r'\s*\{\s*"epoch"\s*:\s*(\d+)', line)
                what = f"the row of epoch {found.group(1)}" if found else "a row"
                warnings.append(f"{self.metrics_file} line {number} is cut short ({what}, after the {epochs} "
                                f"epoch(s) the checkpoint has trained); dropped")
                break
            lost = (f"; the metrics of epoch(s) {', '.join(map(str, missing))}, which the checkpoint has trained, "
                    "are not in the lines before it" if missing else "")
            raise UsageError(f"--resume: {self.metrics_file} line {number} is not a metrics row (cut short or "
                             f"edited){lost}: restore the file, or start afresh with --overwrite")
        return [row for row in rows if row["epoch"] <= epochs], warnings

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        atomic_write_text(self.metrics_file, "".join(json.dumps(row) + "\n" for row in rows))

    def read_summary(self) -> dict[str, Any]:
        return json.loads(self.summary_file.read_text(encoding="utf-8"))

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_text(self.summary_file, json.dumps(summary, indent=2) + "\n")

    # -- checkpoints ---------------------------------------------------------------------------
    def save_checkpoint(self, state: dict[str, Any], config: dict[str, Any]) -> Path:
        """Write ``state`` (a ``Trainer.state_dict()``) with the run's settings as the last checkpoint."""
        return atomic_torch_save({"version": CHECKPOINT_VERSION, "config": config, **state}, self.last_checkpoint)

    def keep_last_as_best(self) -> Path:
        """Copy the last checkpoint to the best one (atomically; the digest comes with it)."""
        with atomic_file(self.best_checkpoint) as handle, self.last_checkpoint.open("rb") as source:
            shutil.copyfileobj(source, handle)
        return self.best_checkpoint

    def load_for_eval(self, *, map_location: Any = "cpu") -> tuple[Path, dict[str, Any], list[str]]:
        """The best checkpoint, else the last (a run without a validation split has no best); if the
        best cannot be used and the last can, the last. Returns the path, the checkpoint and the
        warnings to show (why the other was passed over)."""
        candidates = [p for p in (self.best_checkpoint, self.last_checkpoint) if p.exists()]
        if not candidates:
            raise CheckpointError(f"no checkpoint in {self} (neither {self.BEST} nor {self.LAST})")
        path, checkpoint, errors = _first_usable(candidates, map_location)
        return path, checkpoint, [f"{error}; using {path} instead" for error in errors]

    def load_for_resume(self, *, map_location: Any = "cpu") -> tuple[Path, dict[str, Any], list[str]]:
        """The last checkpoint; if it is missing or cannot be used and the best can, the best,
        which is from an earlier epoch: the warnings returned say so."""
        last, best = self.last_checkpoint, self.best_checkpoint
        candidates = [p for p in (last, best) if p.exists()]
        if not candidates:
            raise CheckpointError(f"no checkpoint at {last}")
        path, checkpoint, errors = _first_usable(candidates, map_location)
        if path == last:
            return path, checkpoint, []
        why = str(errors[0]) if errors else f"{last} is missing"
        return path, checkpoint, [f"{why}; resuming from {path} instead, saved after epoch {checkpoint['epoch']}: "
                                  f"the epochs after it are trained again and their metrics rows dropped"]


def load_checkpoint(path: str | os.PathLike, *, map_location: Any = "cpu") -> dict[str, Any]:
    """A checkpoint written by ``RunDir.save_checkpoint``, its digest checked first, the settings
    it holds in today's names (``config.translate_legacy``). A missing, empty, truncated, damaged
    or unreadable file, or another version, is a ``CheckpointError`` naming it (one line)."""
    from .config import translate_legacy

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        verify_torch_file(path)
    except CorruptFile as error:
        raise CheckpointError(f"checkpoint {error}") from None
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise CheckpointError(f"checkpoint {path} cannot be loaded ({type(error).__name__}: {first})") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("version") != CHECKPOINT_VERSION:
        version = checkpoint.get("version") if isinstance(checkpoint, dict) else None
        raise CheckpointError(f"{path} is a checkpoint of version {version}, expected {CHECKPOINT_VERSION}")
    if isinstance(checkpoint.get("config"), dict):
        try:
            checkpoint["config"] = translate_legacy(checkpoint["config"], f"checkpoint {path}")
        except ValueError as error:
            raise UsageError(str(error)) from None
    return checkpoint


def _first_usable(paths: list[Path], map_location: Any) -> tuple[Path, dict[str, Any], list[CheckpointError]]:
    """The first of ``paths`` that loads, and the errors of those before it; if none loads, one
    ``CheckpointError`` with each one's reason."""
    errors: list[CheckpointError] = []
    for path in paths:
        try:
            return path, load_checkpoint(path, map_location=map_location), errors
        except CheckpointError as error:
            errors.append(error)
    raise CheckpointError("; ".join(str(error) for error in errors))


def default_run_name(model: str, dataset: str, producer: Optional[str], method: str, seed: int) -> str:
    """``MODEL-DATASET-PRODUCER[-bptt]-seedN`` without spaces (IDE runs keep the names they always had)."""
    suffix = "-bptt" if method == "bptt" else ""
    return f"{model}-{dataset}-{producer or 'lif'}{suffix}-seed{seed}".replace(" ", "")
