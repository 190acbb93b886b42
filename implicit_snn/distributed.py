"""Data-parallel training over several processes (``torchrun``), with ``torch.distributed``.

One process per device; every process holds the whole model, trains on its share of each
global batch, and DistributedDataParallel averages the parameter gradients. The implicit
backward needs nothing special: its adjoint solve takes VJPs with respect to the equilibrium
only, so each process solves its own samples' adjoint system locally and only the final
parameter gradients are reduced.

A single process (no ``torchrun``) gets ``Context.single()``: every helper here is then a
no-op, and nothing of ``torch.distributed`` is touched.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, NoReturn, Optional

import torch
import torch.distributed as dist


@dataclasses.dataclass(frozen=True)
class Context:
    """Where this process stands in the run: its rank among ``world_size`` processes and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def single(cls) -> "Context":
        """The context of an ordinary one-process run."""
        return cls()

    @property
    def is_main(self) -> bool:
        """True for the process that writes files and prints (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    """True when ``torchrun`` started this process as one of several (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_process_group(device: torch.device) -> Context:
    """Join the ``torchrun`` process group (NCCL on CUDA, Gloo on the CPU); one process: ``Context.single()``.

    Raises:
        ValueError: CUDA requested with fewer visible devices than processes on this node.
    """
    if not launched_by_torchrun():
        return Context.single()
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        visible = torch.cuda.device_count()
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
        if local_world > visible:
            raise ValueError(f"torchrun started {local_world} processes on this node but only {visible} CUDA "
                             "device(s) are visible; use --nproc_per_node at most that, or `device` cpu")
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Context(rank=rank, world_size=world_size, local_rank=local_rank)


def process_device(device: torch.device, context: Context) -> torch.device:
    """This process's device: ``cuda:LOCAL_RANK`` when training on CUDA with several processes."""
    if context.distributed and device.type == "cuda":
        return torch.device("cuda", context.local_rank)
    return device


def rank_seed(seed: int, context: Context) -> int:
    """The seed that gives process ``rank`` its own stream of torch's global RNG (dropout masks);
    rank 0's is the run's own ``seed``."""
    return seed + 1_000_003 * context.rank


def loss_weight(local_size: int, global_size: int, context: Context) -> float:
    """The factor on this process's mean loss that makes DDP's gradient average the gradient of the
    whole batch's mean loss, whatever the processes' shares (1 with one process)."""
    return local_size * context.world_size / global_size


def sum_across(values: list[float], context: Context, device: torch.device) -> list[float]:
    """Element-wise sums of ``values`` over all processes (the values themselves with one process)."""
    if not context.distributed:
        return list(values)
    # float64 keeps integer counts (samples, correct answers) exact.
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def any_across(flag: bool, context: Context, device: torch.device) -> bool:
    """True on every process when ``flag`` is True on any one of them (a stop request reaches all)."""
    if not context.distributed:
        return flag
    return sum_across([float(flag)], context, device)[0] > 0


def gather_objects(obj: Any, context: Context) -> list[Any]:
    """``obj`` of every process, in rank order (``[obj]`` with one process)."""
    if not context.distributed:
        return [obj]
    out: list[Any] = [None] * context.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_buffers(module: torch.nn.Module, context: Context) -> None:
    """Give every process rank 0's buffers (batch-norm running statistics, power-iteration vectors).

    Each process updates its running statistics with its own batch share, so before evaluating,
    all processes take rank 0's: evaluation then sees the model that rank 0 saves.
    """
    if context.distributed:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def barrier(context: Context) -> None:
    """Wait for every process (nothing with one)."""
    if context.distributed:
        dist.barrier()


def wrap_model(model: torch.nn.Module, context: Context, device: torch.device) -> torch.nn.Module:
    """The module to call for training: ``DistributedDataParallel(model)`` with several processes, else ``model``."""
    if not context.distributed:
        return model
    device_ids: Optional[list[int]] = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def shutdown(context: Context, *, together: bool = True) -> None:
    """Leave the process group (nothing with one process).

    ``together`` (after a normal end) first waits for every process, since Gloo aborts a process
    whose peer tears its connections down first; after an error a process leaves at once (its
    peers may be waiting in another collective) and torchrun stops the others.
    """
    if context.distributed and dist.is_initialized():
        if together:
            dist.barrier()
        dist.destroy_process_group()


def exit_worker(code: int) -> NoReturn:
    """End a ``torchrun`` worker after ``shutdown``: flush its output and leave without Python's
    finalization. There, Gloo's threads now and then abort a process that finished all its work
    ("terminate called without an active exception", 2 of about 20 runs of the two-process tests
    on a loaded 2-core machine), and torchrun then reports the whole run as failed."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
