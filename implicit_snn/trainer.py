"""The training loop: SGD with a step schedule and warm-up, metrics, atomic checkpoints, exact resume.

The trainer takes any classifier ``model(x) -> logits``; when the model exposes
``last_backward`` (a ``SolverResult``) and ``last_forward`` (producer statistics), their
numbers are logged per epoch: backward evaluations, residuals, the fraction of converged
samples, the status counts, and the mean firing rate.
"""

from __future__ import annotations

import dataclasses
import json
import math
import resource
import shutil
import signal
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from . import distributed
from ._io import atomic_file, atomic_write_text, read_jsonl
from .data import ArrayDataset, BatchLoader
from .distributed import Context

CHECKPOINT_VERSION = 1


def step_schedule(optimizer: torch.optim.Optimizer, *, iters_per_epoch: int, milestones: list[int], gamma: float,
                  warmup_iters: int) -> torch.optim.lr_scheduler.LambdaLR:
    """LR × γ^(milestones passed) per epoch, with a linear warm-up (k+1)/W over the first W iterations.

    Stepped once per iteration; milestones are 0-based epoch indices (lr drops at the start of
    those epochs), as in the paper's scripts.
    """
    def factor(step: int) -> float:
        epoch = step // iters_per_epoch
        decay = gamma ** sum(epoch >= m for m in milestones)
        warm = (step + 1) / warmup_iters if step < warmup_iters else 1.0
        return decay * warm

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def peak_memory_mib(device: torch.device) -> float:
    """Peak resident memory of this process (CPU) or peak allocated CUDA memory, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _BackwardTimer:
    """Wall time of one backward: by the clock on a CPU, by CUDA events on a GPU (read after the
    step's own synchronisation, so that timing adds none)."""

    def __init__(self, device: torch.device):
        self._cuda = device.type == "cuda"
        if self._cuda:
            self._start, self._end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._begin = time.perf_counter()

    def stop(self) -> None:
        if self._cuda:
            self._end.record()
        else:
            self._elapsed = time.perf_counter() - self._begin

    def seconds(self) -> float:
        return self._start.elapsed_time(self._end) / 1e3 if self._cuda else self._elapsed


@dataclasses.dataclass
class EpochTotals:
    """Sums over the batches of one epoch (kept in checkpoints so a resumed epoch adds up the same)."""

    samples: int = 0
    loss: float = 0.0
    correct: int = 0
    batches: int = 0
    backward_evals: float = 0.0
    backward_rel_residual: float = 0.0
    backward_converged: float = 0.0
    backward_status: dict = dataclasses.field(default_factory=dict)
    forward_status: dict = dataclasses.field(default_factory=dict)
    firing_rate: float = 0.0
    firing_batches: int = 0
    seconds: float = 0.0
    backward_seconds: float = 0.0  # in loss.backward() (the implicit backward's solve, or BPTT's)
    lr: float = math.nan  # the learning rate of the epoch's latest step

    def add(self, loss: float, correct: int, samples: int, model: torch.nn.Module) -> None:
        self.samples += samples
        self.loss += loss * samples
        self.correct += correct
        self.batches += 1
        result = getattr(model, "last_backward", None)
        if result is not None:
            summary = result.summary()
            self.backward_evals += summary["n_evals"]
            self.backward_rel_residual += summary["rel_residual_max"]
            self.backward_converged += summary["converged_fraction"]
            self.backward_status[summary["status"]] = self.backward_status.get(summary["status"], 0) + 1
        self.add_forward(model)

    def add_forward(self, model: torch.nn.Module) -> None:
        """Add the producer's statistics of the model's latest forward (firing rate, solver status)."""
        forward = getattr(model, "last_forward", {})
        if forward.get("firing_rate") is not None:
            self.firing_rate += float(forward["firing_rate"])
            self.firing_batches += 1
        if "forward_status" in forward:  # a forward solver (the analytic producer) reports its status too
            self.forward_status[forward["forward_status"]] = self.forward_status.get(forward["forward_status"], 0) + 1

    _SUMMED = ("samples", "loss", "correct", "batches", "backward_evals", "backward_rel_residual",
               "backward_converged", "firing_rate", "firing_batches")

    def across_processes(self, context: Context, device: torch.device) -> "EpochTotals":
        """The totals of all processes together (wall time and lr stay this process's own)."""
        if not context.distributed:
            return self
        sums = distributed.sum_across([float(getattr(self, name)) for name in self._SUMMED], context, device)
        merged = dataclasses.replace(self, **{name: type(getattr(self, name))(value)
                                             for name, value in zip(self._SUMMED, sums)})
        for field in ("backward_status", "forward_status"):
            combined: dict = {}
            for counts in distributed.gather_objects(getattr(self, field), context):
                for key, value in counts.items():
                    combined[key] = combined.get(key, 0) + value
            setattr(merged, field, combined)
        return merged

    def forward_metrics(self) -> dict[str, Any]:
        """Batches per forward-solver status and the mean firing rate, each only where reported."""
        out: dict[str, Any] = {}
        if self.forward_status:
            out["forward_status"] = dict(self.forward_status)
        if self.firing_batches:
            out["firing_rate"] = self.firing_rate / self.firing_batches
        return out

    def metrics(self) -> dict[str, Any]:
        n = max(self.batches, 1)
        out = {
            "train_loss": self.loss / max(self.samples, 1),
            "train_acc": self.correct / max(self.samples, 1),
            "train_seconds": self.seconds,
            "train_images_per_s": self.samples / self.seconds if self.seconds > 0 else math.nan,
        }
        if self.backward_seconds > 0:
            out["backward_ms_mean"] = 1e3 * self.backward_seconds / n
        if self.backward_status:
            out.update(backward_evals_mean=self.backward_evals / n, backward_rel_residual_mean=self.backward_rel_residual / n,
                       backward_converged_fraction=self.backward_converged / n, backward_status=dict(self.backward_status))
        out.update(self.forward_metrics())
        return out


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset: ArrayDataset, *, batch_size: int, device: torch.device,
             context: Context = Context.single()) -> dict[str, Any]:
    """Loss, accuracy, mean firing rate and forward-solver status counts of ``model`` (eval mode) on ``dataset``.

    ``firing_rate`` is present for spiking producers, ``forward_status`` (batches per status) for
    producers that solve for the equilibrium (``analytic``): a forward that did not converge shows.
    With several processes each evaluates its part of every batch and all return the totals.
    """
    was_training = model.training
    model.eval()
    totals = EpochTotals()  # loss, correct answers and the forward statistics
    # Its own generator: evaluation must not draw from torch's global RNG, which training uses.
    for x, y in BatchLoader(dataset, batch_size, shuffle=False, generator=torch.Generator(),
                            shard=(context.rank, context.world_size)):
        if y.shape[0] == 0:  # a last batch smaller than the number of processes leaves some without a part
            continue
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits = model(x)
        totals.loss += float(F.cross_entropy(logits, y, reduction="sum"))
        totals.correct += int((logits.argmax(1) == y).sum())
        totals.add_forward(model)
    model.train(was_training)
    totals = totals.across_processes(context, device)
    return {"loss": totals.loss / len(dataset), "acc": totals.correct / len(dataset), **totals.forward_metrics()}


class _StopRequest:
    """First Ctrl-C (or SIGTERM, as from a cluster's scheduler or torchrun shutting down) asks the
    loop to stop after the current step; a second one interrupts at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopRequest":
        self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


class Interrupted(Exception):
    """Training stopped on request (Ctrl-C) after saving a checkpoint."""


class Trainer:
    """Trains a classifier for ``epochs`` epochs, writing everything into ``run_dir``.

    Files: ``metrics.jsonl`` (one JSON object per epoch), ``checkpoint-last.pt`` (every epoch,
    and on Ctrl-C), ``checkpoint-best.pt`` (best validation accuracy), ``summary.json``.
    Checkpoints are written to a temporary file and renamed, so a crash never leaves a broken
    one. ``fit(resume=True)`` continues from ``checkpoint-last.pt`` and produces the same
    metrics as an uninterrupted run: it restores model, optimiser, schedule, the loader's
    generator (replaying the interrupted epoch's order) and torch's RNG.

    With several processes (``context`` from ``distributed.init_process_group``, under
    ``torchrun``) every process trains a part of each ``batch_size`` batch through
    DistributedDataParallel, the metrics are totals over all processes, rank 0 alone writes
    files and prints, and checkpoints keep every process's RNG state (resume with as many).
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, train_data: ArrayDataset,
                 val_data: Optional[ArrayDataset], test_data: Optional[ArrayDataset], epochs: int, batch_size: int,
                 test_batch_size: int, milestones: list[int], gamma: float, warmup_iters: int, run_dir: str | Path,
                 device: torch.device, seed: int, config: dict[str, Any], augment: Optional[Callable] = None,
                 console: Optional[Console] = None, context: Context = Context.single()):
        self.model, self.optimizer = model, optimizer
        self.context = context
        self.net = distributed.wrap_model(model, context, device)  # what training calls
        self.train_data, self.val_data, self.test_data = train_data, val_data, test_data
        self.epochs, self.test_batch_size, self.device = epochs, test_batch_size, device
        self.run_dir = Path(run_dir)
        self.config = config
        self.console = console or Console()
        # Batch norm needs at least two samples in every process's part of a batch.
        least = 2 * context.world_size
        if len(train_data) < least:
            raise ValueError(f"training needs at least {least} samples (2 per process, for batch statistics), "
                             f"got {len(train_data)}")
        if batch_size < least:
            split = f" (split among {context.world_size} processes)" if context.distributed else ""
            raise ValueError(f"--batch-size {batch_size} is too small: batch norm needs at least 2 samples in each "
                             f"process's part of a batch{split}; use at least {least}")
        # A last batch too small to give each process two samples is dropped (only that one).
        self.loader = BatchLoader(train_data, batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed),
                                  drop_last=0 < len(train_data) % batch_size < least, augment=augment,
                                  shard=(context.rank, context.world_size))
        self.scheduler = step_schedule(optimizer, iters_per_epoch=len(self.loader), milestones=list(milestones),
                                       gamma=gamma, warmup_iters=warmup_iters)
        self.epoch = 0  # completed epochs
        self.batch = 0  # batches done in the current epoch
        self.loader_state = self.loader.generator.get_state()
        self.totals = EpochTotals()
        self.best_val_acc = -1.0

    # -- checkpoints -----------------------------------------------------------------------
    @property
    def last_checkpoint(self) -> Path:
        return self.run_dir / "checkpoint-last.pt"

    def _checkpoint(self) -> dict[str, Any]:
        """Everything ``load`` restores; every process must call it (it gathers their RNG states)."""
        rng = distributed.gather_objects(
            (torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None),
            self.context)
        return {
            "version": CHECKPOINT_VERSION,
            "config": self.config,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch, "batch": self.batch, "best_val_acc": self.best_val_acc,
            "totals": dataclasses.asdict(self.totals.across_processes(self.context, self.device)),
            "loader_state": self.loader_state,
            "torch_rng": rng[0][0],
            "cuda_rng": rng[0][1],
            "world_size": self.context.world_size,
            "rank_rng": rng[1:],  # the other processes' (torch, cuda) states
        }

    def save(self, path: Path) -> None:
        """Write a checkpoint atomically (temporary file in the same folder, then rename); rank 0 writes
        its own model, so every process resumes from rank 0's buffers."""
        checkpoint = self._checkpoint()
        if self.context.is_main:
            with atomic_file(path) as handle:
                torch.save(checkpoint, handle)
        distributed.barrier(self.context)  # nobody reads the file before it is complete

    def load(self, path: Path) -> None:
        """Restore everything ``save`` wrote."""
        ckpt = torch.load(path, map_location=self.device, weights_only=False)
        if ckpt.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"{path} is a checkpoint of version {ckpt.get('version')}, expected {CHECKPOINT_VERSION}")
        saved_world = ckpt.get("world_size", 1)
        if saved_world != self.context.world_size:
            raise ValueError(f"{path} was written by a run of {saved_world} process(es); resume it with as many "
                             f"(torchrun --nproc_per_node {saved_world}), not {self.context.world_size}")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.epoch, self.batch, self.best_val_acc = ckpt["epoch"], ckpt["batch"], ckpt["best_val_acc"]
        # The saved totals are all processes' together: one process carries them on.
        self.totals = EpochTotals(**ckpt["totals"]) if self.context.is_main else EpochTotals(lr=ckpt["totals"]["lr"])
        self.loader_state = ckpt["loader_state"]
        torch_rng, cuda_rng = ([(ckpt["torch_rng"], ckpt["cuda_rng"])] + ckpt.get("rank_rng", []))[self.context.rank]
        torch.set_rng_state(torch_rng)
        if cuda_rng is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda_rng)

    def _metrics_path(self) -> Path:
        return self.run_dir / "metrics.jsonl"

    def _read_metrics(self) -> list[dict[str, Any]]:
        path = self._metrics_path()
        return read_jsonl(path) if path.exists() else []

    def _write_metrics(self, rows: list[dict[str, Any]]) -> None:
        if self.context.is_main:
            atomic_write_text(self._metrics_path(), "".join(json.dumps(row) + "\n" for row in rows))

    # -- the loop --------------------------------------------------------------------------
    def fit(self, *, resume: bool = False) -> dict[str, Any]:
        """Train to ``epochs`` (continuing from the last checkpoint with ``resume``); returns the summary.

        Raises:
            Interrupted: after Ctrl-C, once the checkpoint is saved.
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            if not self.last_checkpoint.exists():
                raise FileNotFoundError(f"--resume: no checkpoint at {self.last_checkpoint}")
            self.load(self.last_checkpoint)
            self.console.print(f"resumed from {self.last_checkpoint} at epoch {self.epoch + 1}, batch {self.batch}")
        # Rows of epochs after the checkpoint (a crash between the two writes) are dropped.
        rows = [row for row in self._read_metrics() if row["epoch"] <= self.epoch]
        self._write_metrics(rows)
        with _StopRequest() as stop:
            while self.epoch < self.epochs:
                if not self._train_epoch(stop):
                    self.save(self.last_checkpoint)
                    raise Interrupted(f"stopped at epoch {self.epoch + 1}, batch {self.batch}; checkpoint saved to "
                                      f"{self.last_checkpoint}; continue with --resume")
                row = self._end_epoch()
                rows.append(row)
                self._write_metrics(rows)
                self.save(self.last_checkpoint)
                if row.get("is_best") and self.context.is_main:
                    shutil.copyfile(self.last_checkpoint, self.run_dir / ".checkpoint-best.pt.tmp")
                    (self.run_dir / ".checkpoint-best.pt.tmp").replace(self.run_dir / "checkpoint-best.pt")
        summary = summarise(rows)
        if self.context.is_main:
            atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        return summary

    def _train_epoch(self, stop: _StopRequest) -> bool:
        """Run the rest of the current epoch; False if a stop was requested (state saved by the caller)."""
        self.loader.generator.set_state(self.loader_state)
        self.model.train()
        total = len(self.loader)
        with self._progress() as progress:
            task = progress.add_task(f"epoch {self.epoch + 1}/{self.epochs}", total=total, completed=self.batch,
                                     stats="") if progress else None
            tick = time.perf_counter()
            for index, (x, y) in enumerate(self.loader):
                if index < self.batch:
                    tick = time.perf_counter()
                    continue  # already trained before the interruption; the loader replays its RNG draws
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                logits = self.net(x)
                loss = F.cross_entropy(logits, y)
                self.optimizer.zero_grad(set_to_none=True)
                # DDP averages over processes; the weight makes that the whole batch's mean-loss gradient.
                weight = distributed.loss_weight(y.shape[0], self.loader.global_batch_size(index), self.context)
                timer = _BackwardTimer(self.device)
                (loss * weight if weight != 1 else loss).backward()
                timer.stop()
                self.totals.lr = self.optimizer.param_groups[0]["lr"]
                self.optimizer.step()
                self.scheduler.step()
                self.totals.add(loss.item(), int((logits.argmax(1) == y).sum()), y.shape[0], self.model)
                self.totals.backward_seconds += timer.seconds()  # after .item(), which waited for the device
                now = time.perf_counter()
                self.totals.seconds += now - tick  # wall time including fetching the batch
                tick = now
                self.batch = index + 1
                if progress:
                    t = self.totals
                    progress.update(task, advance=1, stats=f"loss {t.loss / t.samples:.4f} acc {t.correct / t.samples:.2%} "
                                                           f"{t.samples / max(t.seconds, 1e-9):.0f} img/s")
                if distributed.any_across(stop.requested, self.context, self.device):
                    return False
        return True

    def _progress(self):
        if self.console.is_terminal and self.context.is_main:
            return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[stats]}"), TimeRemainingColumn(),
                            console=self.console, transient=True)
        return _NoProgress()

    def _end_epoch(self) -> dict[str, Any]:
        row: dict[str, Any] = {"epoch": self.epoch + 1, "lr": self.totals.lr}
        row.update(self.totals.across_processes(self.context, self.device).metrics())
        # Every process evaluates (its part of) the model rank 0 will save.
        distributed.broadcast_buffers(self.model, self.context)
        eval_start = time.perf_counter()
        for name, data in (("val", self.val_data), ("test", self.test_data)):
            if data is not None:
                result = evaluate(self.model, data, batch_size=self.test_batch_size, device=self.device,
                                  context=self.context)
                row.update({f"{name}_loss": result["loss"], f"{name}_acc": result["acc"]})
        row["eval_seconds"] = time.perf_counter() - eval_start
        row["peak_memory_mib"] = peak_memory_mib(self.device)
        if "val_acc" in row and row["val_acc"] > self.best_val_acc:
            self.best_val_acc = row["val_acc"]
            row["is_best"] = True
        self.epoch += 1
        self.batch = 0
        self.totals = EpochTotals()
        self.loader_state = self.loader.generator.get_state()
        self.console.print(format_row(row))
        return row


class _NoProgress:
    """Stands in for a progress bar when output is not a terminal: per-epoch lines only."""

    def __enter__(self):
        return None

    def __exit__(self, *exc) -> None:
        return None


def format_row(row: dict[str, Any]) -> str:
    """One line per epoch for the console."""
    parts = [f"epoch {row['epoch']}", f"lr {row['lr']:.4g}", f"train loss {row['train_loss']:.4f}",
             f"acc {row['train_acc']:.2%}"]
    if "val_acc" in row:
        parts.append(f"val {row['val_acc']:.2%}" + (" *" if row.get("is_best") else ""))
    if "test_acc" in row:
        parts.append(f"test {row['test_acc']:.2%}")
    if "backward_evals_mean" in row:
        parts.append(f"backward {row['backward_evals_mean']:.1f} VJPs, {row['backward_converged_fraction']:.0%} converged"
                     + (f", {row['backward_ms_mean']:.1f} ms" if "backward_ms_mean" in row else ""))
    if "forward_status" in row:
        parts.append("forward " + ", ".join(f"{k} {v}" for k, v in sorted(row["forward_status"].items())))
    if "firing_rate" in row:
        parts.append(f"rate {row['firing_rate']:.3f}")
    parts.append(f"{row['train_seconds']:.1f}s ({row['train_images_per_s']:.0f} img/s)")
    return " | ".join(parts)


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Final-epoch test accuracy, that of the epoch chosen on validation, and the best epoch's (the paper's protocol)."""
    if not rows:
        return {}
    summary: dict[str, Any] = {"epochs": len(rows), "final_test_acc": rows[-1].get("test_acc")}
    with_val = [r for r in rows if "val_acc" in r]
    if with_val:
        chosen = max(with_val, key=lambda r: (r["val_acc"], -r["epoch"]))
        summary.update(val_chosen_epoch=chosen["epoch"], val_chosen_test_acc=chosen.get("test_acc"))
    with_test = [r for r in rows if "test_acc" in r]
    if with_test:
        best = max(with_test, key=lambda r: (r["test_acc"], -r["epoch"]))
        summary.update(best_epoch=best["epoch"], best_epoch_test_acc=best["test_acc"])
        last10 = with_test[-10:]
        summary["last10_mean_test_acc"] = sum(r["test_acc"] for r in last10) / len(last10)
    summary["train_seconds_per_epoch_median"] = sorted(r["train_seconds"] for r in rows)[len(rows) // 2]
    summary["peak_memory_mib"] = max(r["peak_memory_mib"] for r in rows)
    return summary
