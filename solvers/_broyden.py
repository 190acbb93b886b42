"""Broyden's good method with limited memory, on the root problem g(z) − z = 0."""

from __future__ import annotations

import dataclasses

import torch

from ._checks import check_int
from ._driver import BatchedMap, FixedPointSolver, IterState


@dataclasses.dataclass
class BroydenState(IterState):
    us: torch.Tensor  # [B, D, m] rank-one factors u of the inverse-Jacobian estimate
    vts: torch.Tensor  # [B, m, D] their partners vᵀ
    updates: int  # rank-one updates made so far
    direction: torch.Tensor  # [B, D] the next step, −H (g(z) − z)


def _matvec(us: torch.Tensor, vts: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """H x with H = −I + Σᵢ uᵢ vᵢᵀ."""
    return -x + torch.einsum("bdm,bm->bd", us, torch.einsum("bmd,bd->bm", vts, x))


def _rmatvec(us: torch.Tensor, vts: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """xᵀ H with H = −I + Σᵢ uᵢ vᵢᵀ."""
    return -x + torch.einsum("bm,bmd->bd", torch.einsum("bd,bdm->bm", x, us), vts)


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
        return BroydenState(
            z=z0, gz=gz0,
            us=z0.new_zeros(batch, dim, self.memory),
            vts=z0.new_zeros(batch, self.memory, dim),
            updates=0,
            direction=gz0 - z0,
        )

    def step(self, g: BatchedMap, state: BroydenState) -> BroydenState:  # type: ignore[override]
        dz = state.direction
        z = state.z + dz
        gz = g(z)
        fz = gz - z
        df = fz - (state.gz - state.z)

        # A full memory restarts from H = −I: dropping only the oldest update leaves an estimate
        # that violates the other secant conditions, and the iteration then stalls or diverges.
        used = state.updates % self.memory
        us, vts = state.us[:, :, :used], state.vts[:, :used]
        vt = _rmatvec(us, vts, dz)
        denom = torch.einsum("bd,bd->b", vt, df)
        tiny = torch.finfo(z.dtype).tiny ** 0.5
        usable = (denom.abs() > tiny) & torch.isfinite(denom)
        u = (dz - _matvec(us, vts, df)) / torch.where(usable, denom, torch.ones_like(denom))[:, None]
        u = torch.where(usable[:, None] & torch.isfinite(u), u, torch.zeros_like(u))
        vt = torch.where(usable[:, None] & torch.isfinite(vt), vt, torch.zeros_like(vt))

        state.us[:, :, used], state.vts[:, used] = u, vt
        used += 1
        direction = -_matvec(state.us[:, :, :used], state.vts[:, :used], fz)
        return dataclasses.replace(state, z=z, gz=gz, updates=state.updates + 1, direction=direction)
