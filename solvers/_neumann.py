"""Truncated Neumann series for affine maps."""

from __future__ import annotations

import dataclasses

from typing import ClassVar

import torch

from ._checks import check_range
from ._driver import FixedPointSolver, IterState
from ._maps import BatchedMap
from ._fixed_point import damped_step


@dataclasses.dataclass
class NeumannState(IterState):
    residual: torch.Tensor  # [B, D] r = g(z) − z, the series' next term (before damping)


@dataclasses.dataclass(frozen=True)
class Neumann(FixedPointSolver):
    """Truncated Neumann series for an affine map g(z) = A z + c: z = z0 + α Σₖ Mᵏ r0.

    With r0 = g(z0) − z0 and M = I − α(I − A), step k adds the k-th term, so ``max_iter`` steps
    sum the first ``max_iter`` terms (fewer if ``tol`` is met first; pass a tiny ``tol`` for a
    fixed budget). The series converges when M's spectral radius is below 1 (for α = 1: when
    A's is). Given an ``AffineMap`` (the backward's adjoint system), each term is the linear
    operator applied to the previous one, rₖ₊₁ = (1 − α) rₖ + α A rₖ, one product per step; the
    term is the residual of the partial sum, g(z) − z, so the image g(z) = z + r is formed by
    linearity, not evaluated. Given only g (a map not declared affine), the same partial sums are
    formed as damped fixed-point steps z ← z + α (g(z) − z), each residual measured.

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
        if g.has_linear:
            return NeumannState(z0, gz0, residual=gz0 - z0)
        return IterState(z0, gz0)

    def step(self, g: BatchedMap, state: IterState) -> IterState:
        if not isinstance(state, NeumannState):
            return damped_step(g, state, self.damping)  # the next partial sum S + α (g(S) − S), measured
        alpha, r = self.damping, state.residual
        z = torch.add(state.z, r, alpha=alpha)
        term = g.linear(r)
        residual = term if alpha == 1.0 else torch.lerp(r, term, alpha)
        # The term is the residual; z + r − z would round it away once it is below eps·‖z‖.
        return NeumannState(z, z + residual, residual=residual, fz=residual)
