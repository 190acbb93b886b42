"""Anderson acceleration (type II) with a relative Tikhonov regularisation."""

from __future__ import annotations

import dataclasses

from typing import ClassVar

import torch

from . import _workspace
from ._checks import check_int, check_range
from ._driver import FixedPointSolver, IterState
from ._maps import BatchedMap


@dataclasses.dataclass
class AndersonState(IterState):
    gs: torch.Tensor  # [m, B, D] images g(zᵢ) of past iterates (ring buffer, slot-major)
    fs: torch.Tensor  # [m, B, D] their residuals fᵢ = g(zᵢ) − zᵢ
    gram: torch.Tensor  # [B, m, m] fᵢ · fⱼ of the stored slots
    stored: int  # iterates stored so far (slot of the newest: (stored − 1) % m)
    memory: torch.Tensor  # [2, m, B, D], the storage of gs and fs
    constants: tuple[torch.Tensor, torch.Tensor]  # identity [m, m], ones [B, m, 1]


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

    NAME: ClassVar[str] = "anderson"

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
        # Uninitialised: only the first ``stored`` slots (and their Gram entries) are ever read.
        # The residuals are kept rather than the iterates: the Gram matrix needs them, and
        # keeping them means one new Gram row per step instead of all of gs − xs and its product.
        memory = _workspace.take(z0, 2, self.memory, batch, dim)
        gs, fs = memory[0], memory[1]
        gram = _workspace.take(z0, batch, self.memory, self.memory)
        gs[0].copy_(gz0)
        fz0 = torch.sub(gz0, z0, out=fs[0])
        gram[:, 0, 0] = torch.linalg.vecdot(fz0, fz0)
        constants = torch.eye(self.memory, dtype=z0.dtype, device=z0.device), z0.new_ones(batch, self.memory, 1)
        return AndersonState(z=z0, gz=gz0, fz=fz0, gs=gs, fs=fs, gram=gram, stored=1, memory=memory,
                             constants=constants)

    def finish(self, state: AndersonState) -> None:  # type: ignore[override]
        """Hand the memory back for the next solve of this size."""
        _workspace.give_back(state.memory)
        _workspace.give_back(state.gram)

    def step(self, g: BatchedMap, state: AndersonState) -> AndersonState:  # type: ignore[override]
        n = min(state.stored, self.memory)
        if n == 1:
            # One stored iterate: the mixture is that iterate (a plain, damped step).
            z = state.gz if self.damping == 1.0 else torch.lerp(state.z, state.gz, self.damping)
        else:
            weights = self._mixing_weights(state.gram[:, :n, :n], newest=(state.stored - 1) % self.memory,
                                           constants=state.constants)
            weights = weights[:, None]
            z = torch.bmm(weights, state.gs[:n].transpose(0, 1))[:, 0]  # Σ αᵢ g(zᵢ), a fresh tensor
            if self.damping != 1.0:
                # Σ αᵢ zᵢ = Σ αᵢ g(zᵢ) − Σ αᵢ fᵢ, so β Σ αᵢ g(zᵢ) + (1 − β) Σ αᵢ zᵢ is:
                mixed_f = torch.bmm(weights, state.fs[:n].transpose(0, 1))[:, 0]
                z = torch.add(z, mixed_f, alpha=-(1.0 - self.damping))
        gz = g(z)
        slot = state.stored % self.memory
        fz = torch.sub(gz, z, out=state.fs[slot])
        state.gs[slot].copy_(gz)
        filled = min(state.stored + 1, self.memory)
        # The new slot's row (and column) of the Gram matrix; the other entries are unchanged.
        row = torch.bmm(fz[:, None], state.fs[:filled].permute(1, 2, 0))[:, 0]
        state.gram[:, slot, :filled] = row
        state.gram[:, :filled, slot] = row
        state.z, state.gz, state.fz = z, gz, fz
        state.stored += 1
        return state

    def _mixing_weights(self, gram: torch.Tensor, *, newest: int,
                        constants: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Per-sample affine weights [B, n] minimising the regularised combined residual, from
        the residuals' Gram matrix ``gram`` [B, n, n]; ``newest`` is the ring-buffer slot of the
        latest iterate (the fallback); ``constants``, if given, an identity [m, m] and ones
        [B, m, 1] with m ≥ n, made once per solve rather than at every step."""
        batch, n = gram.shape[0], gram.shape[-1]
        if constants is None:
            constants = torch.eye(n, dtype=gram.dtype, device=gram.device), gram.new_ones(batch, n, 1)
        eye, ones = constants[0][:n, :n], constants[1][:, :n]
        lam = self.regularization
        if lam is None:
            lam = 100 * torch.finfo(gram.dtype).eps
        scale = gram.diagonal(dim1=1, dim2=2).mean(dim=1).clamp_min_(torch.finfo(gram.dtype).tiny)
        system = torch.addcmul(gram, scale[:, None, None], eye, value=lam)  # gram + λ·scale·I
        y = torch.linalg.solve_ex(system, ones)[0][..., 0]
        total = y.sum(dim=1, keepdim=True)
        # A singular Gram system (e.g. a sample already at its fixed point) falls back to the
        # newest iterate, i.e. a plain fixed-point step, for that sample only. The weights are
        # finite exactly when their sum is finite and nonzero, one [B] test instead of a [B, n]
        # one (the two differ only if finite weights overflow their sum).
        ok = torch.isfinite(total) & (total != 0)
        return torch.where(ok, y / total, eye[newest])
