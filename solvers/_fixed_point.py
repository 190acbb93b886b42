"""Damped fixed-point (Picard) iteration."""

from __future__ import annotations

import dataclasses

from typing import ClassVar

import torch

from ._checks import check_range
from ._driver import FixedPointSolver, IterState
from ._maps import BatchedMap


@dataclasses.dataclass(frozen=True)
class FixedPoint(FixedPointSolver):
    """Damped fixed-point iteration z ← (1−β) z + β g(z); converges for contractive maps.

    Args:
        damping: β in (0, 1]; 1 is plain iteration. Smaller values make the iteration
            converge for some non-contractive maps whose Jacobian has eigenvalues below 1.
    """

    NAME: ClassVar[str] = "fixed_point"

    damping: float = 1.0

    def __post_init__(self) -> None:
        check_range("fixed_point", "damping", self.damping, 0.0, 1.0)

    def init(self, g: BatchedMap, z0: torch.Tensor, gz0: torch.Tensor) -> IterState:
        return IterState(z0, gz0)

    def step(self, g: BatchedMap, state: IterState) -> IterState:
        return damped_step(g, state, self.damping)


def damped_step(g: BatchedMap, state: IterState, beta: float) -> IterState:
    """z ← (1−β) z + β g(z), then its image."""
    z = state.gz if beta == 1.0 else torch.lerp(state.z, state.gz, beta)
    return IterState(z, g(z))
