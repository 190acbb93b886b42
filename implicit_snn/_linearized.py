"""The transposed Jacobian of a feedback network's fixed-point map as an explicit operator.

For f(a) = f_N ∘ … ∘ f_2 (σ((W¹ a ⊙ m_fb + d)/Vth)) with f_{l}(r) = σ(m_l ⊙ BN_l(F^l r + b^l)/Vth),
Jᵀv runs the layers backwards: multiply by the gain (σ's slope, the dropout mask and, for
batch norm with fixed statistics, γ/√(var+ε): one per-element factor per layer), pass a batch
norm with batch statistics through its own backward (it couples the samples), and apply the
transposed op. That is exactly what autograd does with f's graph, without its bookkeeping: for
F400 one multiply and one matrix product per VJP.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import torch

from ._ops import OpModule, apply_op_transposed


@dataclasses.dataclass(frozen=True)
class BatchNormBackward:
    """What the backward of a batch norm with batch statistics needs: x̂ and γ/σ per channel."""

    normalised: torch.Tensor  # x̂ = (z − mean) / σ, shaped like the op's output
    scale: torch.Tensor  # γ / σ, broadcastable over it
    dims: tuple[int, ...]  # the batch (and spatial) dimensions the statistics run over

    @classmethod
    def of(cls, z: torch.Tensor, weight: Optional[torch.Tensor], eps: float) -> "BatchNormBackward":
        """From the op's output ``z`` that the batch norm normalised with its own batch statistics."""
        z = z.detach()
        dims = (0, *range(2, z.dim()))
        centred = z - z.mean(dim=dims, keepdim=True)
        # By hand, not torch.var: that is 7x slower over the batch dimension on a CPU.
        inv_std = torch.rsqrt(centred.square().mean(dim=dims, keepdim=True) + eps)
        scale = inv_std if weight is None else inv_std * weight.detach().view_as(inv_std)
        return cls(normalised=centred.mul_(inv_std), scale=scale, dims=dims)

    def __call__(self, g: torch.Tensor) -> torch.Tensor:
        """∂BN/∂z ᵀ g = γ/σ · (g − mean(g) − x̂ · mean(g x̂)), means per channel over the batch."""
        mean_g = g.mean(dim=self.dims, keepdim=True)
        mean_gx = (g * self.normalised).mean(dim=self.dims, keepdim=True)
        return self.scale * (g - mean_g - self.normalised * mean_gx)


@dataclasses.dataclass(frozen=True)
class Stage:
    """One layer of the map, seen from its output: v ↦ opᵀ(BNᵀ(gain ⊙ v))."""

    op: OpModule
    weight: torch.Tensor  # the op's (effective) weight, without graph
    in_shape: tuple[int, ...]  # the op's input, [B, ...]
    gain: torch.Tensor  # σ's slope × dropout mask (× γ/√(var+ε) for fixed statistics), [B, ...]
    batch_norm: Optional[BatchNormBackward] = None


class TransposedJacobian:
    """v ↦ J_f(a)ᵀ v for a feedback network's map, from the stages recorded while evaluating f at a.

    ``stages`` run from the last layer back to layer 1; the last stage is the feedback W¹.
    Call as ``jt(v)`` or ``jt(v, add=g)`` for ``Jᵀv + g`` (fused into the last product where it can).
    """

    def __init__(self, stages: Sequence[Stage]):
        self.stages = tuple(stages)

    def __call__(self, v: torch.Tensor, add: Optional[torch.Tensor] = None) -> torch.Tensor:
        g = v
        last = len(self.stages) - 1
        for index, stage in enumerate(self.stages):
            g = g * stage.gain
            if stage.batch_norm is not None:
                g = stage.batch_norm(g)
            if index == last and add is not None and g.dim() == 2 and isinstance(stage.op, torch.nn.Linear):
                return torch.addmm(add, g, stage.weight)  # Jᵀv + g in one product
            g = apply_op_transposed(stage.op, g, stage.weight, stage.in_shape)
        return g if add is None else g.add_(add)
