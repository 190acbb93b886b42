"""The training loop: SGD with a step schedule and warm-up, per-epoch metrics, resumable state.

The trainer takes any classifier ``model(x) -> logits``; when the model exposes
``last_backward`` (a ``SolverResult``) and ``last_forward`` (producer statistics), their
numbers are kept per epoch: backward evaluations, residuals, the fraction of converged
samples, the status counts, and the mean firing rate (also per layer, with the fractions of
silent and saturated neurons). Every step is checked for non-finite numbers (the loss, the
gradients, then the parameters and buffers after the update): by default
``NonFiniteError`` stops training, with ``nonfinite="skip"`` the step is skipped (up to
``max_skipped_steps`` per epoch). It writes no files and prints nothing:
``state_dict``/``load_state_dict`` give what a checkpoint must hold to resume exactly, and the
application (``implicit_snn.app``) decides where that goes and what is shown.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import time
import warnings
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from . import distributed, interrupt
from .data import ArrayDataset, BatchLoader
from .distributed import Context
from .interrupt import StopRequested
from .metrics import BackwardTimer, EpochTotals, peak_memory_mib
from .nonfinite import ADVICE, NONFINITE, NonFiniteError, finite_sums, first_non_finite, value_kind

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


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset: ArrayDataset, *, batch_size: int, device: torch.device,
             context: Context = Context.single(), should_stop: Optional[Callable[[], bool]] = None) -> dict[str, Any]:
    """Loss, accuracy, mean firing rate and forward-solver status counts of ``model`` (eval mode) on ``dataset``.

    ``firing_rate`` is present for spiking producers, ``forward_status`` (batches per status) for
    producers that solve for the equilibrium (``analytic``): a forward that did not converge shows.
    With several processes each evaluates its part of every batch and all return the totals.

    Raises:
        StopRequested: ``should_stop()`` turned true (checked before every batch, in every process
            together); the model is back in the mode it was in.
    """
    was_training = model.training
    model.eval()
    totals = EpochTotals()  # loss, correct answers and the forward statistics
    try:
        # Its own generator: evaluation must not draw from torch's global RNG, which training uses.
        for x, y in BatchLoader(dataset, batch_size, shuffle=False, generator=torch.Generator(),
                                shard=(context.rank, context.world_size)):
            # Before skipping an empty part: every process must take part in the agreement.
            if should_stop is not None and distributed.any_across(should_stop(), context, device):
                raise StopRequested("a stop was requested during the evaluation")
            if y.shape[0] == 0:  # a last batch smaller than the number of processes leaves some without a part
                continue
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            logits = model(x)
            totals.loss += float(F.cross_entropy(logits, y, reduction="sum"))
            totals.correct += int((logits.argmax(1) == y).sum())
            totals.add_forward(model)
    finally:
        model.train(was_training)
    totals = totals.across_processes(context, device)
    return {"loss": totals.loss / len(dataset), "acc": totals.correct / len(dataset),
            **totals.forward_metrics(per_layer=False)}


class Trainer:
    """Trains a classifier epoch by epoch; the caller runs ``train_epoch`` then ``end_epoch`` until ``done``.

    ``state_dict()`` holds everything ``load_state_dict`` needs to continue exactly where it was
    taken, mid-epoch included: model, optimizer, schedule, the loader's generator (the
    interrupted epoch's order is replayed), the epoch's running totals and torch's RNG.

    With several processes (``context`` from ``distributed.init_process_group``, under
    ``torchrun``) every process trains a part of each ``batch_size`` batch through
    DistributedDataParallel, the metrics are totals over all processes, and the state keeps
    every process's RNG state (continue with as many processes).

    Every step is checked for non-finite numbers: the loss and the gradients before the update
    (one fused reduction, read with the loss), the parameters and floating-point buffers after it
    (a second one). ``nonfinite="stop"`` (the default) raises ``NonFiniteError``; ``"skip"``
    leaves model and optimizer as they were before the step (buffers such as batch norm's running
    statistics included; this keeps a copy of parameters, optimizer state and buffers at every
    step), advances the schedule as after any step, counts it in the epoch's ``skipped_steps``, and
    raises ``NonFiniteError`` once more than ``max_skipped_steps`` steps of one epoch were skipped.

    A stop request (``should_stop``) is acted on between steps. In a single process a request
    made through ``implicit_snn.interrupt.request_stop`` (the command line's signal handler)
    also abandons the step in progress, inside its simulation (``interrupt.check``): the trainer
    is then exactly as after the last completed step, batch-norm statistics, power-iteration
    vectors and RNG states included (each step starts by copying these small things), so a
    ``state_dict`` taken then resumes bit-exactly. With several processes a step is never
    abandoned halfway (the others would wait for it in their gradient reduction).
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, train_data: ArrayDataset,
                 val_data: Optional[ArrayDataset], test_data: Optional[ArrayDataset], epochs: int, batch_size: int,
                 test_batch_size: int, milestones: list[int], gamma: float, warmup_iters: int,
                 device: torch.device, seed: int, augment: Optional[Callable] = None,
                 context: Context = Context.single(), nonfinite: str = "stop", max_skipped_steps: int = 10):
        if nonfinite not in NONFINITE:
            raise ValueError(f"`nonfinite` must be {' or '.join(map(repr, NONFINITE))}, got {nonfinite!r}")
        if isinstance(max_skipped_steps, bool) or not isinstance(max_skipped_steps, int) or max_skipped_steps < 0:
            raise ValueError(f"`max_skipped_steps` must be an integer >= 0, got {max_skipped_steps!r}")
        self.nonfinite, self.max_skipped_steps = nonfinite, max_skipped_steps
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
        self.totals = EpochTotals(**state["totals"]) if self.context.is_main else EpochTotals(
            lr=state["totals"]["lr"], skipped=state["totals"].get("skipped", 0))  # skips count alike in every process
        self.loader_state = state["loader_state"]
        torch_rng, cuda_rng = ([(state["torch_rng"], state["cuda_rng"])] + state.get("rank_rng", []))[self.context.rank]
        torch.set_rng_state(torch_rng)
        if cuda_rng is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda_rng)

    def train_epoch(self, *, should_stop: Callable[[], bool] = lambda: False,
                    on_batch: Optional[Callable[["Trainer"], None]] = None) -> bool:
        """Run the rest of the current epoch; False when ``should_stop()`` turned true (checked after
        every step, in every process together) or a step was abandoned on
        ``interrupt.request_stop()`` (see the class), True when the epoch's batches are done.

        ``on_batch(trainer)`` is called after every step, skipped ones too (a progress display reads
        ``trainer.totals``).

        Raises:
            NonFiniteError: a non-finite loss, gradient, parameter or buffer (``nonfinite="stop"``),
                or more than ``max_skipped_steps`` skipped steps in the epoch (``"skip"``). The
                trainer is then left mid-step (after a non-finite update, with it): go back to the
                last ``state_dict`` saved.
        """
        self.loader.generator.set_state(self.loader_state)
        self.model.train()
        skip = self.nonfinite == "skip"
        single = not self.context.distributed  # only a lone process may abandon a step halfway
        tick = time.perf_counter()
        for index, (x, y) in enumerate(self.loader):
            if index < self.batch:
                tick = time.perf_counter()
                continue  # already trained before the interruption; the loader replays its RNG draws
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            # The forward moves batch norm's statistics and power-iteration vectors and draws dropout masks.
            buffers = self._copy_buffers() if skip or single else None
            rng = self._rng_states() if single else None
            try:
                with interrupt.abortable() if single else contextlib.nullcontext():
                    logits = self.net(x)
                    loss = F.cross_entropy(logits, y)
                    self.optimizer.zero_grad(set_to_none=True)
                    # DDP averages over processes; the weight makes that the whole batch's mean-loss gradient.
                    weight = distributed.loss_weight(y.shape[0], self.loader.global_batch_size(index), self.context)
                    timer = BackwardTimer(self.device)
                    (loss * weight if weight != 1 else loss).backward()
                    timer.stop()
            except StopRequested:
                self._restore_buffers(buffers)
                self._restore_rng_states(rng)
                self.optimizer.zero_grad(set_to_none=True)
                return False
            self.totals.lr = self.optimizer.param_groups[0]["lr"]
            loss_value, problem = self._check_loss_and_gradients(loss)
            if problem is None:
                before = self._copy_update_state() if skip else None
                self.optimizer.step()
                problem = self._check_updated()
                if problem is not None and before is not None:
                    self._restore_update_state(before)
            if problem is None:
                self.scheduler.step()
                self.totals.add(loss_value, int((logits.argmax(1) == y).sum()), y.shape[0], self.model)
                self.totals.backward_seconds += timer.seconds()  # after reading the loss, which waited for the device
            else:
                self._non_finite(problem, index)  # raises, unless the step is skipped
                self._restore_buffers(buffers)
                self.totals.skipped += 1
                # The schedule counts batches, skipped ones too (its milestones are epochs); a skipped
                # first step leaves the optimizer unstepped, which torch would warn about.
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
                    self.scheduler.step()
            now = time.perf_counter()
            self.totals.seconds += now - tick  # wall time including fetching the batch
            tick = now
            self.batch = index + 1
            if on_batch is not None:
                on_batch(self)
            if distributed.any_across(should_stop(), self.context, self.device):
                return False
        return True

    # -- the non-finite checks ----------------------------------------------------------------------
    def _agreed(self, problem: Optional[str]) -> Optional[str]:
        """``problem``, or a problem of another process: all processes skip or stop together."""
        if self.context.distributed and distributed.any_across(problem is not None, self.context, self.device):
            return problem or "a value in another process"
        return problem

    def _check_loss_and_gradients(self, loss: torch.Tensor) -> tuple[float, Optional[str]]:
        """The loss as a number, and what is not finite among the loss and the gradients (None: all
        finite). One read of the loss and the gradients' sums together."""
        named = [(name, p.grad) for name, p in self.model.named_parameters() if p.grad is not None]
        values = finite_sums([loss, *(g for _, g in named)])
        problem = None
        if not math.isfinite(values[0]):
            problem = f"the loss is {'NaN' if math.isnan(values[0]) else values[0]}"
        elif (found := first_non_finite(named, values[1:])) is not None:
            problem = f"the gradient of {found[0]} holds {value_kind(found[1])}"
        return values[0], self._agreed(problem)

    def _state_tensors(self) -> list[tuple[str, torch.Tensor]]:
        """The model's parameters and floating-point buffers, named as in its state dict."""
        return ([(f"parameter {n}", p) for n, p in self.model.named_parameters()]
                + [(f"buffer {n}", b) for n, b in self.model.named_buffers() if b.is_floating_point()])

    def _check_updated(self) -> Optional[str]:
        """What is not finite among the parameters and buffers after the update (None: all finite)."""
        named = self._state_tensors()
        found = first_non_finite(named, finite_sums([t for _, t in named]))
        problem = None if found is None else f"{found[0]} holds {value_kind(found[1])} after the optimizer step"
        return self._agreed(problem)

    def _non_finite(self, problem: str, index: int) -> None:
        """Raise ``NonFiniteError`` for ``problem`` at batch ``index``, unless the step may be skipped."""
        where = f"epoch {self.epoch + 1}, batch {index + 1} of {len(self.loader)}"
        if self.nonfinite == "stop":
            raise NonFiniteError(f"non-finite numbers at {where}: {problem}; {ADVICE}, or skip such steps with "
                                 "`nonfinite` 'skip'", epoch=self.epoch + 1, batch=index + 1, what=problem)
        if self.totals.skipped + 1 > self.max_skipped_steps:
            raise NonFiniteError(f"non-finite numbers at {where}: {problem}; that is {self.totals.skipped + 1} steps "
                                 f"skipped in this epoch, more than `max_skipped_steps` {self.max_skipped_steps}; "
                                 f"{ADVICE}", epoch=self.epoch + 1, batch=index + 1, what=problem)

    def _rng_states(self) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """torch's CPU RNG state and, training on CUDA, the device's (what a step draws from)."""
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return torch.get_rng_state(), cuda

    def _restore_rng_states(self, saved: Optional[tuple[torch.Tensor, Optional[torch.Tensor]]]) -> None:
        if saved is None:
            return
        torch.set_rng_state(saved[0])
        if saved[1] is not None:
            torch.cuda.set_rng_state(saved[1], self.device)

    def _copy_buffers(self) -> list[tuple[str, torch.Tensor]]:
        return [(name, b.detach().clone()) for name, b in self.model.named_buffers()]

    def _restore_buffers(self, saved: Optional[list[tuple[str, torch.Tensor]]]) -> None:
        with torch.no_grad():
            for name, value in saved or []:
                current = self.model.get_buffer(name)
                if current.shape == value.shape:
                    current.copy_(value)
                else:  # the forward replaced it (a lazily sized buffer)
                    module, _, leaf = name.rpartition(".")
                    setattr(self.model.get_submodule(module), leaf, value)

    def _optimized(self) -> list[torch.Tensor]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def _copy_update_state(self) -> tuple[list[torch.Tensor], dict]:
        """The parameters and the optimizer's state of each, to undo a non-finite update."""
        params = self._optimized()
        state = {p: {k: v.clone() if torch.is_tensor(v) else copy.deepcopy(v) for k, v in self.optimizer.state[p].items()}
                 for p in params if p in self.optimizer.state}
        return [p.detach().clone() for p in params], state

    def _restore_update_state(self, saved: tuple[list[torch.Tensor], dict]) -> None:
        values, state = saved
        params = self._optimized()
        with torch.no_grad():
            for p, value in zip(params, values):
                p.copy_(value)
        for p in params:
            if p in state:
                self.optimizer.state[p] = state[p]
            else:
                self.optimizer.state.pop(p, None)

    @property
    def batches_per_epoch(self) -> int:
        """Steps in one epoch (of this process's loader)."""
        return len(self.loader)

    def end_epoch(self, *, should_stop: Optional[Callable[[], bool]] = None) -> dict[str, Any]:
        """Close the finished epoch: evaluate on the validation and test sets; returns the epoch's metrics row.

        Raises:
            StopRequested: ``should_stop()`` turned true between evaluation batches (in every
                process together) or, in a single process, ``interrupt.request_stop()`` was called
                during one. The trainer is left as before the call: a ``state_dict`` taken now
                resumes with this evaluation.
        """
        row: dict[str, Any] = {"epoch": self.epoch + 1, "lr": self.totals.lr}
        row.update(self.totals.across_processes(self.context, self.device).metrics())
        single = not self.context.distributed
        buffers, rng = (self._copy_buffers(), self._rng_states()) if single else (None, None)
        # Every process evaluates (its part of) the model rank 0 will save.
        distributed.broadcast_buffers(self.model, self.context)
        eval_start = time.perf_counter()
        try:
            with interrupt.abortable() if single else contextlib.nullcontext():
                for name, data in (("val", self.val_data), ("test", self.test_data)):
                    if data is not None:
                        result = evaluate(self.model, data, batch_size=self.test_batch_size, device=self.device,
                                          context=self.context, should_stop=should_stop)
                        row.update({f"{name}_loss": result["loss"], f"{name}_acc": result["acc"]})
        except StopRequested:
            self._restore_buffers(buffers)
            self._restore_rng_states(rng)
            raise
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
