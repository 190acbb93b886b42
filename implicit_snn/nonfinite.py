"""The training step's guard against non-finite numbers: what to do (``NONFINITE``), the error
that stops a run, and the cheap checks (one fused reduction per group of tensors)."""

from __future__ import annotations

import math
from typing import Optional

import torch

#: What ``Trainer`` does at a step with a non-finite loss, gradient or updated parameter.
NONFINITE = ("stop", "skip")


class NonFiniteError(RuntimeError):
    """Training met a non-finite number (NaN or inf) and stopped.

    ``epoch`` and ``batch`` count from 1; ``what`` names it (``the loss``, ``the gradient of
    <parameter>``, ``parameter <name>``, ``buffer <name>``). The message is one line and says
    what to try.
    """

    def __init__(self, message: str, *, epoch: int, batch: int, what: str):
        super().__init__(message)
        self.epoch, self.batch, self.what = epoch, batch, what


ADVICE = ("try a lower `lr`, a tighter backward solve (a smaller `b_tol`, a larger `b_max_iter`), "
           "or check the input data for NaN or inf")


def value_kind(tensor: torch.Tensor) -> str:
    """Which non-finite values ``tensor`` holds: ``NaN``, ``inf`` or both (or values so large that
    their sum overflows, the one case the sums of ``finite_sums`` take for non-finite with all values finite)."""
    kinds = [name for name, found in (("NaN", torch.isnan(tensor).any()), ("inf", torch.isinf(tensor).any()))
             if bool(found)]
    return " and ".join(kinds) or f"values so large that their sum overflows (|x| up to {float(tensor.abs().max()):.3g})"


def finite_sums(tensors: list[torch.Tensor]) -> list[float]:
    """The sum of each tensor, read at once: a NaN or inf anywhere makes its tensor's sum non-finite.

    Plain sums, stacked into one tensor: on a CPU the cheapest test (an inf-norm or isfinite over
    every value costs over ten times as much); a sum of finite values overflows only for values
    within a factor of the tensor's size of the float range, which is a blow-up all the same.
    """
    return torch.stack([t.detach().sum() for t in tensors]).tolist() if tensors else []


def first_non_finite(named: list[tuple[str, torch.Tensor]], sums: list[float]) -> Optional[tuple[str, torch.Tensor]]:
    """The first (name, tensor) of ``named`` whose sum in ``sums`` is not finite; None if all are."""
    return next((entry for entry, value in zip(named, sums) if not math.isfinite(value)), None)
