"""Solver memory reused from one solve to the next on the CPU.

A fresh multi-megabyte CPU allocation is handed back to the operating system when freed, so
the next solve's first write to each page faults (measured: 1,835 minor faults per 10-step
Broyden solve on the F400 backward, a third of its own work). Keeping one buffer per shape
between solves avoids that. CUDA needs none of this: PyTorch's caching allocator already reuses
device memory, so there the buffers are plain allocations.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch

#: Most bytes kept between solves, all buffers together; larger buffers are never kept. A kept
#: buffer costs resident memory only for the pages some solve wrote: Broyden's workspace for
#: F64C5 (batch 128, memory 30) is 385 MiB, of which a 5-step solve writes 77 MiB; not kept, every
#: solve paid for those pages again in faults, about half of its own work.
MAX_KEPT_BYTES = 1 << 30

_lock = threading.Lock()
_kept: "OrderedDict[tuple, torch.Tensor]" = OrderedDict()


def take(like: torch.Tensor, *shape: int) -> torch.Tensor:
    """An uninitialised tensor of ``shape`` with ``like``'s dtype and device, reused if kept."""
    if like.device.type == "cpu":
        with _lock:
            buffer = _kept.pop((shape, like.dtype), None)
        if buffer is not None:
            return buffer
    return like.new_empty(shape)


def give_back(buffer: torch.Tensor) -> None:
    """Keep ``buffer`` for a later ``take`` of its shape; the caller must not use it afterwards."""
    nbytes = buffer.numel() * buffer.element_size()
    if buffer.device.type != "cpu" or nbytes > MAX_KEPT_BYTES:
        return
    with _lock:
        _kept[(tuple(buffer.shape), buffer.dtype)] = buffer
        # Oldest first out, so that a change of problem size does not pin the old sizes.
        while sum(b.numel() * b.element_size() for b in _kept.values()) > MAX_KEPT_BYTES:
            _kept.popitem(last=False)


def clear() -> None:
    """Drop every kept buffer (to free the memory, or in tests)."""
    with _lock:
        _kept.clear()
