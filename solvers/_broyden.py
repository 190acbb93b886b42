"""Broyden's good method with limited memory, on the root problem g(z) − z = 0."""

from __future__ import annotations

import dataclasses

import torch

from ._checks import check_int
from ._driver import BatchedMap, FixedPointSolver, IterState


@dataclasses.dataclass
class BroydenState(IterState):
    us: torch.Tensor  # [B, m, D] rank-one factors u of the inverse-Jacobian estimate
    vts: torch.Tensor  # [B, m, D] their partners vᵀ
    updates: int  # rank-one updates made so far
    direction: torch.Tensor  # [B, D] the next step, −H (g(z) − z)


def _low_rank(left: torch.Tensor, right: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Σᵢ leftᵢ (rightᵢ · x) for [B, k, D] factors, as two strided batched GEMVs (no copies)."""
    coefficients = torch.bmm(right, x[:, :, None])  # [B, k, 1]
    return torch.bmm(coefficients.transpose(1, 2), left)[:, 0]


def _matvec(us: torch.Tensor, vts: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """H x with H = −I + Σᵢ uᵢ vᵢᵀ."""
    return _low_rank(us, vts, x) - x


def _rmatvec(us: torch.Tensor, vts: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """xᵀ H with H = −I + Σᵢ uᵢ vᵢᵀ."""
    return _low_rank(vts, us, x) - x


@dataclasses.dataclass(frozen=True)
class Broyden(FixedPointSolver):
    """Broyden's good method for F(z) = g(z) − z = 0, with a limited-memory inverse Jacobian.

    The inverse-Jacobian estimate starts at H = −I (so the first step is a plain fixed-point
    step) and receives one rank-one good-Broyden update per step, per sample; once ``memory``
    updates are stored it restarts from −I (restarted Broyden). Updates whose denominator vanishes (a sample
    already at its solution, or a breakdown) are skipped for that sample instead of
    producing NaN. Full steps, no line search: one evaluation of g per step.

    Args:
        memory: number of rank-one updates kept (memory use is 2·B·D·memory numbers).
    """

    memory: int = 30

    def __post_init__(self) -> None:
        check_int("broyden", "memory", self.memory, minimum=1)

    def init(self, g: BatchedMap, z0: torch.Tensor, gz0: torch.Tensor) -> BroydenState:
        batch, dim = z0.shape
        # Uninitialised: a slot is written before any product reads it, and zero-filling the
        # whole memory cost more than the low-rank products of a typical 10-step solve.
        return BroydenState(
            z=z0, gz=gz0,
            us=z0.new_empty(batch, self.memory, dim),
            vts=z0.new_empty(batch, self.memory, dim),
            updates=0,
            direction=gz0 - z0,
        )

    def step(self, g: BatchedMap, state: BroydenState) -> BroydenState:  # type: ignore[override]
        dz = state.direction
        z = state.z + dz
        gz = g(z)
        fz = gz - z

        # A full memory restarts from H = −I: dropping only the oldest update leaves an estimate
        # that violates the other secant conditions, and the iteration then stalls or diverges.
        used = state.updates % self.memory
        us, vts = state.us[:, :used], state.vts[:, :used]
        h_fz = _matvec(us, vts, fz)
        vt = _rmatvec(us, vts, dz)
        # H Δf = H f(z) − H f(z_prev) = h_fz + dz, because dz = −H f(z_prev) was formed with this
        # same H (unless the memory just restarted); this saves one low-rank product per step.
        h_df = h_fz + dz if used > 0 else (state.gz - state.z) - fz
        denom = (dz * h_df).sum(dim=1)  # vᵀ Δf = dzᵀ H Δf
        # A vanishing or non-finite denominator (a sample at its solution, a breakdown, a NaN
        # iterate) skips that sample's update, so nothing non-finite enters the factors.
        usable = ((denom.abs() > torch.finfo(z.dtype).tiny ** 0.5) & torch.isfinite(denom))[:, None]
        u = torch.where(usable, (dz - h_df) / torch.where(usable, denom[:, None], 1.0), 0.0)
        vt = torch.where(usable, vt, 0.0)

        state.us[:, used], state.vts[:, used] = u, vt
        # H_new f(z) = H f(z) + u (vᵀ f(z)): the new direction without another low-rank product.
        direction = -(h_fz + u * (vt * fz).sum(dim=1, keepdim=True))
        return dataclasses.replace(state, z=z, gz=gz, updates=state.updates + 1, direction=direction)
