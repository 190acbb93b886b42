"""The training loop: SGD with a step schedule and warm-up, per-epoch metrics, resumable state.

The trainer takes any classifier ``model(x) -> logits``; when the model exposes
``last_backward`` (a ``SolverResult``) and ``last_forward`` (producer statistics), their
numbers are kept per epoch: backward evaluations, residuals, the fraction of converged
samples, the status counts, and the mean firing rate. It writes no files and prints nothing:
``state_dict``/``load_state_dict`` give what a checkpoint must hold to resume exactly, and the
application (``implicit_snn.app``) decides where that goes and what is shown.
"""

from __future__ import annotations

import dataclasses
import math
import resource
import time
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from . import distributed
from .data import ArrayDataset, BatchLoader
from .distributed import Context

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


class BackwardTimer:
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


class Trainer:
    """Trains a classifier epoch by epoch; the caller runs ``train_epoch`` then ``end_epoch`` until ``done``.

    ``state_dict()`` holds everything ``load_state_dict`` needs to continue exactly where it was
    taken, mid-epoch included: model, optimizer, schedule, the loader's generator (the
    interrupted epoch's order is replayed), the epoch's running totals and torch's RNG.

    With several processes (``context`` from ``distributed.init_process_group``, under
    ``torchrun``) every process trains a part of each ``batch_size`` batch through
    DistributedDataParallel, the metrics are totals over all processes, and the state keeps
    every process's RNG state (continue with as many processes).
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, train_data: ArrayDataset,
                 val_data: Optional[ArrayDataset], test_data: Optional[ArrayDataset], epochs: int, batch_size: int,
                 test_batch_size: int, milestones: list[int], gamma: float, warmup_iters: int,
                 device: torch.device, seed: int, augment: Optional[Callable] = None,
                 context: Context = Context.single()):
        self.model, self.optimizer = model, optimizer
        self.context = context
        self.net = distributed.wrap_model(model, context, device)  # what training calls
        self.train_data, self.val_data, self.test_data = train_data, val_data, test_data
        self.epochs, self.test_batch_size, self.device = epochs, test_batch_size, device
        # Batch norm needs at least two samples in every process's part of a batch.
        least = 2 * context.world_size
        if len(train_data) < least:
            raise ValueError(f"training needs at least {least} samples (2 per process, for batch statistics), "
                             f"got {len(train_data)}")
        if batch_size < least:
            split = f" (split among {context.world_size} processes)" if context.distributed else ""
            raise ValueError(f"`batch_size` {batch_size} is too small: batch norm needs at least 2 samples in each "
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

    @property
    def done(self) -> bool:
        """Whether every epoch has been trained."""
        return self.epoch >= self.epochs

    def state_dict(self) -> dict[str, Any]:
        """Everything ``load_state_dict`` restores; every process must call it (it gathers their RNG states)."""
        rng = distributed.gather_objects(
            (torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None),
            self.context)
        return {
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

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned (written by as many processes as this run has)."""
        saved_world = state.get("world_size", 1)
        if saved_world != self.context.world_size:
            raise ValueError(f"the state was saved by a run of {saved_world} process(es); continue it with as many "
                             f"(torchrun --nproc_per_node {saved_world}), not {self.context.world_size}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.batch, self.best_val_acc = state["epoch"], state["batch"], state["best_val_acc"]
        # The saved totals are all processes' together: one process carries them on.
        self.totals = EpochTotals(**state["totals"]) if self.context.is_main else EpochTotals(lr=state["totals"]["lr"])
        self.loader_state = state["loader_state"]
        torch_rng, cuda_rng = ([(state["torch_rng"], state["cuda_rng"])] + state.get("rank_rng", []))[self.context.rank]
        torch.set_rng_state(torch_rng)
        if cuda_rng is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda_rng)

    def train_epoch(self, *, should_stop: Callable[[], bool] = lambda: False,
                    on_batch: Optional[Callable[["Trainer"], None]] = None) -> bool:
        """Run the rest of the current epoch; False when ``should_stop()`` turned true (checked after
        every step, in every process together), True when the epoch's batches are done.

        ``on_batch(trainer)`` is called after every step (a progress display reads ``trainer.totals``).
        """
        self.loader.generator.set_state(self.loader_state)
        self.model.train()
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
            timer = BackwardTimer(self.device)
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
            if on_batch is not None:
                on_batch(self)
            if distributed.any_across(should_stop(), self.context, self.device):
                return False
        return True

    @property
    def batches_per_epoch(self) -> int:
        """Steps in one epoch (of this process's loader)."""
        return len(self.loader)

    def end_epoch(self) -> dict[str, Any]:
        """Close the finished epoch: evaluate on the validation and test sets; returns the epoch's metrics row."""
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
        return row


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
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
