"""The feedback-weight constraint of supplement F.1: W_eff = clamp(α, −c, c) · W / ‖W‖₂.

‖W‖₂ is estimated by power iteration whose vectors persist across training steps (one step
per training forward, none in eval, so evaluation is deterministic). By default the norm is
that of the weight reshaped to a matrix [out, −1] (Miyato et al.'s spectral normalisation, as
the reference); with ``operator_norm=True`` a convolution's true operator norm is used (power
iteration through the convolution and its adjoint), the quantity the theorems' convergence
condition ‖W‖₂ ≤ γ·Vth is about. For linear layers the two coincide.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._ops import OpModule, apply_op


class SpectralNorm(nn.Module):
    """Re-parameterise a layer's weight as clamp(α, −c, c) · W / ‖W‖₂ with a learnable α.

    Args:
        bound: c, the clip of α (1 by default, with Vth = 2 this gives γ = 1/2).
        operator_norm: use the operator norm of a (transposed) convolution on inputs of
            ``input_shape`` instead of the reshaped-kernel norm.
        input_shape: per-sample input shape ``(C, H, W)``; needed with ``operator_norm``.
        n_power_iterations: power-iteration steps per training forward.
        alpha_init: ``"bound"`` (default) starts α at min(‖W_init‖₂, c); ``"norm"`` at ‖W_init‖₂,
            as the reference code does.

    Both starts give the same initial W_eff. From ``"norm"`` (1.96 for F400) the clip gives α zero
    gradient until weight decay has pulled it below c (about 2,700 steps for F400: the reference's
    behaviour, its defect B11); from ``"bound"`` the clip, written as min/max, passes half the
    gradient at the bound, so α trains from the first step.
    """

    ALPHA_INITS = ("bound", "norm")

    def __init__(self, bound: float = 1.0, *, operator_norm: bool = False,
                 input_shape: Optional[Sequence[int]] = None, n_power_iterations: int = 1,
                 alpha_init: str = "bound"):
        super().__init__()
        if not bound > 0:
            raise ValueError(f"spectral norm `bound` must be > 0, got {bound!r}")
        if isinstance(n_power_iterations, bool) or not isinstance(n_power_iterations, int) or n_power_iterations < 1:
            raise ValueError(f"`n_power_iterations` must be an int >= 1, got {n_power_iterations!r}")
        if operator_norm and input_shape is None:
            raise ValueError("operator_norm=True needs the layer's per-sample `input_shape` (C, H, W)")
        if alpha_init not in self.ALPHA_INITS:
            raise ValueError(f"`alpha_init` must be one of {self.ALPHA_INITS}, got {alpha_init!r}")
        self.bound = float(bound)
        self.alpha_init = alpha_init
        self.operator_norm = bool(operator_norm)
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.n_power_iterations = n_power_iterations
        self.alpha = nn.Parameter(torch.tensor(1.0))
        self.register_buffer("u", torch.empty(0))
        self.register_buffer("v", torch.empty(0))

    def _matrix_mode(self, op: OpModule) -> bool:
        return not self.operator_norm or isinstance(op, nn.Linear)

    def initialize_(self, op: OpModule, *, warmup_iterations: int = 100) -> None:
        """Draw the power-iteration vectors for ``op``, converge them, and set α (``alpha_init``)."""
        weight = op.weight.detach()
        gen = torch.Generator().manual_seed(0)
        if self._matrix_mode(op):
            mat = weight.reshape(weight.shape[0], -1)
            u = torch.randn(mat.shape[0], generator=gen, dtype=weight.dtype)
            v = torch.randn(mat.shape[1], generator=gen, dtype=weight.dtype)
        else:
            v = torch.randn((1, *self.input_shape), generator=gen, dtype=weight.dtype)
            u = apply_op(op, v, weight, bias=False)
        self.u = F.normalize(u.flatten(), dim=0).view_as(u).to(weight.device)
        self.v = F.normalize(v.flatten(), dim=0).view_as(v).to(weight.device)
        self._power_iteration(op, weight, warmup_iterations)
        sigma = float(self._sigma(op, weight))
        with torch.no_grad():
            self.alpha.fill_(sigma if self.alpha_init == "norm" else min(sigma, self.bound))

    @torch.no_grad()
    def _power_iteration(self, op: OpModule, weight: torch.Tensor, steps: int) -> None:
        weight = weight.detach()
        for _ in range(steps):
            if self._matrix_mode(op):
                mat = weight.reshape(weight.shape[0], -1)
                self.v.copy_(F.normalize(mat.T @ self.u, dim=0))
                self.u.copy_(F.normalize(mat @ self.v, dim=0))
            else:
                forward = apply_op(op, self.v, weight, bias=False)
                self.u.copy_(F.normalize(forward.flatten(), dim=0).view_as(forward))
                with torch.enable_grad():
                    probe = self.v.clone().requires_grad_()
                    (adjoint,) = torch.autograd.grad(apply_op(op, probe, weight, bias=False), probe, self.u)
                self.v.copy_(F.normalize(adjoint.flatten(), dim=0).view_as(adjoint))

    def _sigma(self, op: OpModule, weight: torch.Tensor) -> torch.Tensor:
        """uᵀ W v: the norm estimate, differentiable in W with u, v held fixed (as in spectral normalisation)."""
        if self._matrix_mode(op):
            return torch.dot(self.u, weight.reshape(weight.shape[0], -1) @ self.v)
        return (self.u * apply_op(op, self.v, weight, bias=False)).sum()

    def effective_weight(self, op: OpModule, *, update: bool) -> torch.Tensor:
        """clamp(α, −c, c) · W / σ(W); ``update`` first advances the power iteration."""
        if update:
            self._power_iteration(op, op.weight, self.n_power_iterations)
        # min/max rather than clamp: at α = ±c it passes half the gradient where clamp passes none,
        # so α starting at the bound is trainable from the first step.
        bound = self.alpha.new_tensor(self.bound)
        alpha = torch.minimum(torch.maximum(self.alpha, -bound), bound)
        scale = alpha / self._sigma(op, op.weight)
        return op.weight * scale

    def extra_repr(self) -> str:
        return (f"bound={self.bound}, operator_norm={self.operator_norm}, n_power_iterations={self.n_power_iterations}, "
                f"alpha_init={self.alpha_init!r}")
