"""Anderson acceleration (type II) with a relative Tikhonov regularisation."""

from __future__ import annotations

import dataclasses

import torch

from ._checks import check_int, check_range
from ._driver import BatchedMap, FixedPointSolver, IterState


@dataclasses.dataclass
class AndersonState(IterState):
    xs: torch.Tensor  # [B, m, D] past iterates (ring buffer)
    gs: torch.Tensor  # [B, m, D] their images
    stored: int


@dataclasses.dataclass(frozen=True)
class Anderson(FixedPointSolver):
    """Anderson acceleration: mix the last ``memory`` images to minimise the combined residual.

    Each step solves, per sample, min ‖Σᵢ αᵢ (g(zᵢ) − zᵢ)‖² + λ‖α‖² subject to Σᵢ αᵢ = 1 and
    moves to z = β Σᵢ αᵢ g(zᵢ) + (1 − β) Σᵢ αᵢ zᵢ. One evaluation of g per step.

    Args:
        memory: m, number of past iterates mixed.
        regularization: λ relative to the mean squared residual of the stored iterates, so
            that it stays negligible as residuals shrink (a fixed absolute λ, as in torchdeq,
            turns Anderson into plain iteration at tight tolerances). ``None`` uses
            100·eps of the dtype, enough to keep the Gram system solvable.
        damping: β in (0, 1], the mixing weight of the images.
    """

    memory: int = 6
    regularization: float | None = None
    damping: float = 1.0

    def __post_init__(self) -> None:
        check_int("anderson", "memory", self.memory, minimum=1)
        if self.regularization is not None:
            check_range("anderson", "regularization", self.regularization, 0.0, 1.0, low_open=False)
        check_range("anderson", "damping", self.damping, 0.0, 1.0)

    def init(self, g: BatchedMap, z0: torch.Tensor, gz0: torch.Tensor) -> AndersonState:
        batch, dim = z0.shape
        # Uninitialised: only the first ``stored`` slots are ever read.
        xs = z0.new_empty(batch, self.memory, dim)
        gs = z0.new_empty(batch, self.memory, dim)
        xs[:, 0], gs[:, 0] = z0, gz0
        return AndersonState(z=z0, gz=gz0, xs=xs, gs=gs, stored=1)

    def step(self, g: BatchedMap, state: AndersonState) -> AndersonState:  # type: ignore[override]
        n = min(state.stored, self.memory)
        xs, gs = state.xs[:, :n], state.gs[:, :n]
        if n == 1:
            weights = xs.new_ones(xs.shape[0], 1)
        else:
            weights = self._mixing_weights(gs - xs, newest=(state.stored - 1) % self.memory)
        mixed_g = torch.einsum("bn,bnd->bd", weights, gs)
        z = mixed_g if self.damping == 1.0 else torch.lerp(torch.einsum("bn,bnd->bd", weights, xs), mixed_g, self.damping)
        gz = g(z)
        slot = state.stored % self.memory
        state.xs[:, slot], state.gs[:, slot] = z, gz
        return dataclasses.replace(state, z=z, gz=gz, stored=state.stored + 1)

    def _mixing_weights(self, res: torch.Tensor, *, newest: int) -> torch.Tensor:
        """Per-sample affine weights [B, n] minimising the regularised combined residual;
        ``newest`` is the ring-buffer slot of the latest iterate (the fallback)."""
        gram = torch.bmm(res, res.transpose(1, 2))
        n = gram.shape[-1]
        lam = self.regularization
        if lam is None:
            lam = 100 * torch.finfo(res.dtype).eps
        scale = gram.diagonal(dim1=1, dim2=2).mean(dim=1).clamp_min(torch.finfo(res.dtype).tiny)
        eye = torch.eye(n, dtype=res.dtype, device=res.device)
        system = gram + (lam * scale)[:, None, None] * eye
        y, _ = torch.linalg.solve_ex(system, res.new_ones(res.shape[0], n, 1))
        weights = y[..., 0] / y.sum(dim=(1, 2))[:, None]
        # A singular Gram system (e.g. a sample already at its fixed point) falls back to the
        # newest iterate, i.e. a plain fixed-point step, for that sample only.
        ok = torch.isfinite(weights).all(dim=1, keepdim=True)
        fallback = torch.zeros_like(weights)
        fallback[:, newest] = 1.0
        return torch.where(ok, weights, fallback)
