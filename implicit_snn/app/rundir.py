"""The run directory: the one place that knows its file names and how each file is written."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Optional

import torch

from ..files import atomic_file, atomic_write_text, read_jsonl

CHECKPOINT_VERSION = 1


class RunDir:
    """A training run's folder: ``config.json`` (the resolved settings), ``metrics.jsonl`` (one
    object per epoch), ``checkpoint-last.pt`` (every epoch, and on a stop), ``checkpoint-best.pt``
    (best validation accuracy) and ``summary.json``. Every file is written atomically."""

    CONFIG = "config.json"
    METRICS = "metrics.jsonl"
    SUMMARY = "summary.json"
    LAST = "checkpoint-last.pt"
    BEST = "checkpoint-best.pt"
    DATA_FILES = "data-files.json"
    #: every file a training run writes, in the order a run creates them
    RUN_FILES = (CONFIG, DATA_FILES, METRICS, LAST, BEST, SUMMARY)

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

    def clear(self) -> None:
        """Delete the run files (to start afresh); anything else in the folder stays."""
        for name in self.RUN_FILES:
            (self.path / name).unlink(missing_ok=True)

    # -- settings, metrics, summary ----------------------------------------------------------
    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write_text(self.config_file, json.dumps(config, indent=2) + "\n")

    def read_config(self) -> dict[str, Any]:
        return json.loads(self.config_file.read_text(encoding="utf-8"))

    @property
    def data_files_file(self) -> Path:
        return self.path / self.DATA_FILES

    def write_data_files(self, files: list[dict[str, Any]]) -> None:
        """The data files the run read (path, content MD5, whether it was verified)."""
        atomic_write_text(self.data_files_file, json.dumps(files, indent=2) + "\n")

    def read_data_files(self) -> list[dict[str, Any]]:
        return json.loads(self.data_files_file.read_text(encoding="utf-8"))

    def read_metrics(self) -> list[dict[str, Any]]:
        """The metrics rows so far ([] before the first epoch ends)."""
        return read_jsonl(self.metrics_file) if self.metrics_file.exists() else []

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        atomic_write_text(self.metrics_file, "".join(json.dumps(row) + "\n" for row in rows))

    def read_summary(self) -> dict[str, Any]:
        return json.loads(self.summary_file.read_text(encoding="utf-8"))

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_text(self.summary_file, json.dumps(summary, indent=2) + "\n")

    # -- checkpoints ---------------------------------------------------------------------------
    def save_checkpoint(self, state: dict[str, Any], config: dict[str, Any]) -> Path:
        """Write ``state`` (a ``Trainer.state_dict()``) with the run's settings as the last checkpoint."""
        with atomic_file(self.last_checkpoint) as handle:
            torch.save({"version": CHECKPOINT_VERSION, "config": config, **state}, handle)
        return self.last_checkpoint

    def keep_last_as_best(self) -> Path:
        """Copy the last checkpoint to the best one (atomically)."""
        with atomic_file(self.best_checkpoint) as handle, self.last_checkpoint.open("rb") as source:
            shutil.copyfileobj(source, handle)
        return self.best_checkpoint

    def checkpoint_for_eval(self) -> Path:
        """The best checkpoint, else the last (a run without a validation split has no best)."""
        return self.best_checkpoint if self.best_checkpoint.exists() else self.last_checkpoint


def load_checkpoint(path: str | os.PathLike, *, map_location: Any = "cpu") -> dict[str, Any]:
    """A checkpoint written by ``RunDir.save_checkpoint``; another version is a one-line error."""
    checkpoint = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(checkpoint, dict) or checkpoint.get("version") != CHECKPOINT_VERSION:
        version = checkpoint.get("version") if isinstance(checkpoint, dict) else None
        raise ValueError(f"{path} is a checkpoint of version {version}, expected {CHECKPOINT_VERSION}")
    return checkpoint


def resolve_checkpoint(where: str | os.PathLike) -> Path:
    """A checkpoint file as given, or a run directory's checkpoint for evaluation (best, else last)."""
    path = Path(where)
    return RunDir(path).checkpoint_for_eval() if path.is_dir() else path


def default_run_name(model: str, dataset: str, producer: Optional[str], method: str, seed: int) -> str:
    """``MODEL-DATASET-PRODUCER[-bptt]-seedN`` without spaces (IDE runs keep the names they always had)."""
    suffix = "-bptt" if method == "bptt" else ""
    return f"{model}-{dataset}-{producer or 'lif'}{suffix}-seed{seed}".replace(" ", "")
