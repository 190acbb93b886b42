"""What the analyses share: leaving the model as it was, timing on a device, relative norms."""

from __future__ import annotations

import contextlib
import copy
from typing import Iterator

import torch

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
