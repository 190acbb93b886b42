"""Synaptic layers: a linear, conv or transposed-conv operation, optional batch norm, dropout.

A layer maps presynaptic activity (spikes, rates or input) to the synaptic current of the
next neuron layer. How batch norm normalises is chosen per call (see ``BNMode``), because the
simulation and the differentiable fixed-point map need different statistics (supplement F.2).
Dropout is variational: the caller draws one mask per forward pass (``sample_mask``) and
passes the same mask to every time step and to the fixed-point map.
"""

from __future__ import annotations

import enum
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._ops import OpModule, apply_op
from .spectral import SpectralNorm


class BNMode(enum.Enum):
    """How a layer's batch norm normalises in one call."""

    BATCH = "batch"  # batch statistics, running statistics updated (nn.BatchNorm in train mode)
    RUNNING = "running"  # the running statistics, nothing updated
    GIVEN = "given"  # statistics handed in by the caller, nothing updated
    # The running statistics (as the simulation used them), which then move towards this batch's
    # statistics as nn.BatchNorm's would: the consistent gradient's f in training.
    RUNNING_THEN_UPDATED = "running_then_updated"


@torch.no_grad()
def output_statistics(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance of an op's output ``[B, C, ...]`` (batch norm's batch statistics)."""
    dims = [0] + list(range(2, z.dim()))
    mean = z.mean(dim=dims, keepdim=True)
    # Two passes by hand: torch.var over the batch dimension is 7x slower on a CPU.
    var = (z - mean).square_().mean(dim=dims)
    return mean.flatten(), var


def unit_norm_init_(op: OpModule) -> None:
    """The reference's initialisation: U(−1, 1), then each output unit's fan-in scaled to unit L2 norm; zero bias."""
    with torch.no_grad():
        op.weight.uniform_(-1.0, 1.0)
        # Output units are dim 0 of Linear/Conv2d weights and dim 1 of ConvTranspose2d weights.
        out_dim = 1 if isinstance(op, nn.ConvTranspose2d) else 0
        reduce = [d for d in range(op.weight.dim()) if d != out_dim]
        op.weight.div_(torch.linalg.vector_norm(op.weight, dim=reduce, keepdim=True))
        if op.bias is not None:
            op.bias.zero_()


class SynapticLayer(nn.Module):
    """op → [batch norm] → [variational dropout mask], optionally with a spectral-norm constraint.

    Args:
        op: ``nn.Linear``, ``nn.Conv2d`` or ``nn.ConvTranspose2d``; initialised as the reference
            does (``unit_norm_init_``) unless ``init=False``.
        batch_norm: add BatchNorm1d/2d over the op's output channels.
        bn_momentum: the running statistics' update rate (PyTorch's 0.1 by default).
        dropout: variational dropout probability p in [0, 1).
        spectral: a ``SpectralNorm`` constraining the op's weight (feedback layers).
        init: apply ``unit_norm_init_`` to ``op``.
    """

    def __init__(self, op: OpModule, *, batch_norm: bool = False, dropout: float = 0.0,
                 spectral: Optional[SpectralNorm] = None, init: bool = True, bn_momentum: float = 0.1):
        super().__init__()
        if not isinstance(op, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            raise TypeError(f"op must be nn.Linear, nn.Conv2d or nn.ConvTranspose2d, got {type(op).__name__}")
        if not (isinstance(dropout, (int, float)) and 0.0 <= dropout < 1.0):
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if not (isinstance(bn_momentum, (int, float)) and 0.0 < bn_momentum <= 1.0):
            raise ValueError(f"bn_momentum must be in (0, 1], got {bn_momentum!r}")
        if init:
            unit_norm_init_(op)
        self.op = op
        channels = op.out_features if isinstance(op, nn.Linear) else op.out_channels
        self.bn: Optional[nn.Module] = None
        if batch_norm:
            norm = nn.BatchNorm1d if isinstance(op, nn.Linear) else nn.BatchNorm2d
            self.bn = norm(channels, momentum=float(bn_momentum))
        self.dropout = float(dropout)
        self.spectral = spectral
        if spectral is not None:
            spectral.initialize_(op)

    def effective_weight(self, *, update: bool) -> torch.Tensor:
        """The weight in use: the op's own, or its spectrally normalised version (one power step if ``update``)."""
        if self.spectral is None:
            return self.op.weight
        return self.spectral.effective_weight(self.op, update=update)

    def linear(self, x: torch.Tensor, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The op alone (with its bias): no batch norm, no dropout."""
        return apply_op(self.op, x, weight)

    @torch.no_grad()
    def batch_statistics(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and biased variance of ``op(x)``, the statistics batch norm would use (as constants)."""
        return output_statistics(self.linear(x))

    def bn_scale(self, mode: BNMode, stats: Optional[Sequence[torch.Tensor]] = None) -> Optional[torch.Tensor]:
        """γ / √(var + ε) per channel for a batch norm with fixed statistics (``RUNNING``/``GIVEN``), or None
        without batch norm; shaped to broadcast over ``[B, C]`` or ``[B, C, H, W]`` outputs."""
        bn = self.bn
        if bn is None:
            return None
        if mode is BNMode.BATCH:
            raise ValueError("batch statistics depend on the batch: their Jacobian is not a per-channel scale")
        # RUNNING_THEN_UPDATED: called before the update, this is the scale its normalisation uses.
        var = stats[1] if mode is BNMode.GIVEN else bn.running_var
        scale = torch.rsqrt(var.detach() + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight.detach()
        return scale if isinstance(self.op, nn.Linear) else scale[:, None, None]

    def forward(self, x: torch.Tensor, *, weight: Optional[torch.Tensor] = None, mask: Optional[torch.Tensor] = None,
                bn_mode: BNMode = BNMode.RUNNING, stats: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
        """The synaptic current for presynaptic activity ``x``.

        Args:
            x: ``[B, ...]`` presynaptic activity.
            weight: the effective weight to use (defaults to the op's).
            mask: dropout mask shaped like the output, or None.
            bn_mode: how batch norm normalises (ignored without batch norm).
            stats: ``(mean, var)`` for ``BNMode.GIVEN``.
        """
        return self.finish(self.linear(x, weight), mask=mask, bn_mode=bn_mode, stats=stats)

    def finish(self, z: torch.Tensor, *, mask: Optional[torch.Tensor] = None, bn_mode: BNMode = BNMode.RUNNING,
               stats: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
        """Batch norm and dropout applied to the op's output ``z``: ``forward`` is ``finish(linear(x))``."""
        if self.bn is not None:
            z = self._normalize(z, bn_mode, stats)
        return z if mask is None else z * mask

    def _normalize(self, z: torch.Tensor, mode: BNMode, stats: Optional[Sequence[torch.Tensor]]) -> torch.Tensor:
        bn = self.bn
        if mode is BNMode.BATCH:
            if not bn.training:
                raise RuntimeError("BNMode.BATCH needs the layer in training mode (call model.train())")
            return bn(z)
        if mode is BNMode.GIVEN:
            if stats is None:
                raise ValueError("BNMode.GIVEN needs `stats=(mean, var)`")
            mean, var = stats
        else:
            mean, var = bn.running_mean, bn.running_var
        if mode is BNMode.RUNNING_THEN_UPDATED:
            if not bn.training:
                raise RuntimeError("BNMode.RUNNING_THEN_UPDATED needs the layer in training mode (call model.train())")
            # Copies: the normalisation's backward must see the statistics it used, not the updated ones.
            mean, var = mean.clone(), var.clone()
            with torch.no_grad():
                bn(z.detach())  # nn.BatchNorm's own running-statistics update; its output is not needed
        return F.batch_norm(z, mean, var, bn.weight, bn.bias, training=False, momentum=0.0, eps=bn.eps)

    def sample_mask(self, shape: Sequence[int], *, like: torch.Tensor) -> Optional[torch.Tensor]:
        """A variational dropout mask ``[B, ...]`` (Bernoulli(1−p)/(1−p)), or None when p = 0 or in eval mode."""
        if not self.training or self.dropout == 0.0:
            return None
        keep = 1.0 - self.dropout
        # [U < keep] is Bernoulli(keep) exactly as bernoulli_ is, at half its cost on a CPU; the
        # comparison writes into the uniform draws themselves (no bool tensor, no copy).
        draws = torch.rand(tuple(shape), dtype=like.dtype, device=like.device)
        return torch.lt(draws, keep, out=draws).div_(keep)
