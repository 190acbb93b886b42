"""Dense solve of an affine fixed-point problem: materialise the Jacobian, factorise, solve."""

from __future__ import annotations

import dataclasses

from typing import ClassVar

import torch

from ._checks import check_int
from ._driver import FixedPointSolver, IterState
from ._maps import BatchedMap


@dataclasses.dataclass
class ExactState(IterState):
    lu: torch.Tensor  # [B, D, D] LU factors of I − A
    pivots: torch.Tensor


@dataclasses.dataclass(frozen=True)
class Exact(FixedPointSolver):
    """Materialise A = ∂g/∂z per sample and solve (I − A) z = c densely with torch.linalg.

    Exact, up to rounding, for affine maps g(z) = A z + c; meant for small problems and as the
    oracle of the tests. For a coupled batch (``coupled=True``) A is the Jacobian of the whole
    flattened batch, one (B·D)² matrix. Building A costs D products: the columns A eᵢ of an
    ``AffineMap``'s linear part, or g(z0 + eᵢ) − g(z0) for a plain map; the solve one more. Each further step is a chord
    Newton refinement z ← z + (I − A)⁻¹ (g(z) − z) with the same factorisation, which also
    makes it usable on mildly non-affine maps.

    Args:
        max_size: the largest number of unknowns per sample D accepted (A has B·D² entries).
    """

    NAME: ClassVar[str] = "exact"

    max_size: int = 4096

    def __post_init__(self) -> None:
        check_int("exact", "max_size", self.max_size, minimum=1)

    def init(self, g: BatchedMap, z0: torch.Tensor, gz0: torch.Tensor) -> ExactState:
        batch, dim = z0.shape
        if dim > self.max_size:
            raise ValueError(
                f"exact: the problem has {dim} unknowns per sample (a coupled batch is one sample), above "
                f"`max_size`={self.max_size} (it materialises a D×D Jacobian per sample); use an iterative "
                "solver or raise `max_size`"
            )
        jac = z0.new_empty(batch, dim, dim)
        basis = torch.zeros_like(z0)
        for i in range(dim):
            basis[:, i] = 1.0
            # The linear part itself where the map gives it; else by difference, exact for affine g.
            jac[:, :, i] = g.linear(basis) if g.has_linear else g(z0 + basis) - gz0
            basis[:, i] = 0.0
        system = -jac
        system.diagonal(dim1=1, dim2=2).add_(1.0)
        lu, pivots, _ = torch.linalg.lu_factor_ex(system)
        z = z0 + torch.linalg.lu_solve(lu, pivots, (gz0 - z0)[..., None])[..., 0]
        return ExactState(z=z, gz=g(z), lu=lu, pivots=pivots)

    def step(self, g: BatchedMap, state: ExactState) -> ExactState:  # type: ignore[override]
        z = state.z + torch.linalg.lu_solve(state.lu, state.pivots, (state.gz - state.z)[..., None])[..., 0]
        return dataclasses.replace(state, z=z, gz=g(z))
