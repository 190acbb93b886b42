"""Truncated Neumann series for affine maps."""

from __future__ import annotations

import dataclasses

from typing import ClassVar

import torch

from ._checks import check_range
from ._driver import BatchedMap, FixedPointSolver, IterState
from ._fixed_point import damped_step


@dataclasses.dataclass(frozen=True)
class Neumann(FixedPointSolver):
    """Truncated Neumann series for an affine map g(z) = A z + c: z = z0 + α Σₖ Mᵏ r0.

    With r0 = g(z0) − z0 and M = I − α(I − A), step ``k`` adds the k-th term, so ``max_iter``
    steps sum the first ``max_iter`` terms (fewer if ``tol`` is met first; pass a tiny ``tol``
    for a fixed budget). The series converges when M's spectral radius is below 1 (for α = 1:
    when A's is). Each new term is formed as α (g(S) − S) at the current partial sum S, which for
    affine maps equals α Mᵏ r0; forming it as α M applied to the previous term would need
    A t = g(z0 + t) − g(z0), which cancels catastrophically once terms are small (measured:
    residuals stalled at 2e-6 in float32). So the iterates are those of damped fixed-point
    iteration with damping α, and every reported residual is evaluated, not extrapolated.

    Args:
        damping: α in (0, 1]; below 1 it damps the series (Richardson preconditioning), as
            ``fixed_point``'s ``damping``.
    """

    NAME: ClassVar[str] = "neumann"
    SOLVES_NONLINEAR: ClassVar[bool] = False  # a series for affine maps, whatever its iterates coincide with

    damping: float = 1.0

    def __post_init__(self) -> None:
        check_range("neumann", "damping", self.damping, 0.0, 1.0)

    def init(self, g: BatchedMap, z0: torch.Tensor, gz0: torch.Tensor) -> IterState:
        return IterState(z0, gz0)

    def step(self, g: BatchedMap, state: IterState) -> IterState:
        return damped_step(g, state, self.damping)  # the next partial sum S + α (g(S) − S)
