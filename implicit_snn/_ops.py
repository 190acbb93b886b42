"""Applying a linear, conv or transposed-conv module with a substitute weight."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

OpModule = nn.Linear | nn.Conv2d | nn.ConvTranspose2d


def apply_op(op: OpModule, x: torch.Tensor, weight: Optional[torch.Tensor] = None, *, bias: bool = True) -> torch.Tensor:
    """``op(x)`` with its weight optionally replaced; ``bias=False`` applies the linear part only."""
    weight = op.weight if weight is None else weight
    b = op.bias if bias else None
    if isinstance(op, nn.Linear):
        return F.linear(x, weight, b)
    if isinstance(op, nn.ConvTranspose2d):
        return F.conv_transpose2d(x, weight, b, op.stride, op.padding, op.output_padding, op.groups, op.dilation)
    return F.conv2d(x, weight, b, op.stride, op.padding, op.dilation, op.groups)
