"""Damped fixed-point (Picard) iteration."""

from __future__ import annotations

import dataclasses

import torch

from ._checks import check_range
from ._driver import BatchedMap, FixedPointSolver, IterState


@dataclasses.dataclass(frozen=True)
class FixedPoint(FixedPointSolver):
    """Damped fixed-point iteration z ← (1−β) z + β g(z); converges for contractive maps.

    Args:
        damping: β in (0, 1]; 1 is plain iteration. Smaller values make the iteration
            converge for some non-contractive maps whose Jacobian has eigenvalues below 1.
    """

    damping: float = 1.0

    def __post_init__(self) -> None:
        check_range("fixed_point", "damping", self.damping, 0.0, 1.0)

    def init(self, g: BatchedMap, z0: torch.Tensor, gz0: torch.Tensor) -> IterState:
        return IterState(z0, gz0)

    def step(self, g: BatchedMap, state: IterState) -> IterState:
        if self.damping == 1.0:
            z = state.gz
        else:
            z = torch.lerp(state.z, state.gz, self.damping)
        return IterState(z, g(z))
