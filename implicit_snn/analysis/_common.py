"""What the analyses share: leaving the model as it was, one timed training step, relative norms."""

from __future__ import annotations

import contextlib
import copy
import time
from typing import Any, Callable, ContextManager, Iterator, Optional

import torch
import torch.nn.functional as F

from ..classifier import ImplicitClassifier


@contextlib.contextmanager
def preserved(model: ImplicitClassifier) -> Iterator[dict[str, torch.Tensor]]:
    """Restore the model's state dict, mode, producer and backward on exit; yields the saved state dict."""
    state = copy.deepcopy(model.state_dict())
    training, producer, adjoint = model.training, model.producer, model.adjoint
    try:
        yield state
    finally:
        model.load_state_dict(state)
        model.train(training)
        model.producer, model.adjoint = producer, adjoint


def sync(tensor: torch.Tensor) -> None:
    if tensor.is_cuda:
        torch.cuda.synchronize(tensor.device)


def relative(difference: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-sample ‖difference‖ / ‖reference‖ (0/0 counts as 0)."""
    num = difference.flatten(1).norm(dim=1)
    den = reference.flatten(1).norm(dim=1)
    return torch.where(den > 0, num / den.clamp_min(torch.finfo(den.dtype).tiny), num)


def training_step_gradient(model: ImplicitClassifier, state: dict[str, torch.Tensor], x: torch.Tensor,
                           y: torch.Tensor, seed: int) -> tuple[torch.Tensor, float]:
    """The flattened parameter gradient of one training step from ``state`` and its backward time (ms)."""
    model.load_state_dict(state)
    torch.manual_seed(seed)  # the same dropout masks for every solver
    return timed_parameter_gradient(model, F.cross_entropy(model(x), y))


def timed_parameter_gradient(model: torch.nn.Module, loss: torch.Tensor,
                             around: Optional[Callable[[], ContextManager[Any]]] = None) -> tuple[torch.Tensor, float]:
    """The flattened gradient of ``loss`` in the model's trainable parameters (zeros where unused)
    and the backward's milliseconds; ``around`` wraps the backward (a memory probe, say)."""
    params = [p for p in model.parameters() if p.requires_grad]
    with (around() if around is not None else contextlib.nullcontext()):
        sync(loss)
        start = time.perf_counter()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        sync(loss)
        elapsed = 1e3 * (time.perf_counter() - start)
    flat = torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for p, g in zip(params, grads)])
    return flat, elapsed
