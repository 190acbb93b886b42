"""Truncated Neumann series for affine maps."""

from __future__ import annotations

import dataclasses

import torch

from ._checks import check_range
from ._driver import BatchedMap, FixedPointSolver, IterState


@dataclasses.dataclass
class NeumannState(IterState):
    g0: torch.Tensor  # g(z0), subtracted to isolate the linear part
    z0: torch.Tensor
    term: torch.Tensor  # the next term of the series, α·Mᵏ r0


@dataclasses.dataclass(frozen=True)
class Neumann(FixedPointSolver):
    """Truncated Neumann series for an affine map g(z) = A z + c: z = z0 + α Σₖ Mᵏ r0.

    With r0 = g(z0) − z0 and M = I − α(I − A), the partial sums approach the solution of
    (I − A) z = c; step ``k`` adds the k-th term, so ``max_iter`` steps sum ``max_iter`` terms.
    Each term costs one evaluation of the linear part A t = g(z0 + t) − g(z0), and the
    residual of the partial sum is read off the next term (exact for affine maps); the driver
    checks it with one evaluation at the returned sum. Converges when the spectral radius of
    M is below 1 (for α = 1: when A's is).

    Args:
        step_size: α in (0, 1]; below 1 it damps the series (Richardson preconditioning).
    """

    step_size: float = 1.0

    exact_residuals = False

    def __post_init__(self) -> None:
        check_range("neumann", "step_size", self.step_size, 0.0, 1.0)

    def init(self, g: BatchedMap, z0: torch.Tensor, gz0: torch.Tensor) -> IterState:
        return NeumannState(z=z0, gz=gz0, g0=gz0, z0=z0, term=self.step_size * (gz0 - z0))

    def step(self, g: BatchedMap, state: NeumannState) -> NeumannState:  # type: ignore[override]
        term = state.term
        linear = g(state.z0 + term) - state.g0
        next_term = term - self.step_size * (term - linear)
        z = state.z + term
        return dataclasses.replace(state, z=z, gz=z + next_term / self.step_size, term=next_term)
