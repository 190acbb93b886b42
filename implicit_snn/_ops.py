"""Applying a linear, conv or transposed-conv module: with a substitute weight, transposed, or
with its output already known."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

OpModule = nn.Linear | nn.Conv2d | nn.ConvTranspose2d


def apply_op(op: OpModule, x: torch.Tensor, weight: Optional[torch.Tensor] = None, *,
             bias: bool | torch.Tensor = True) -> torch.Tensor:
    """``op(x)`` with its weight optionally replaced; ``bias=False`` applies the linear part only,
    a tensor replaces the op's bias."""
    weight = op.weight if weight is None else weight
    b = bias if isinstance(bias, torch.Tensor) else (op.bias if bias else None)
    if isinstance(op, nn.Linear):
        return F.linear(x, weight, b)
    if isinstance(op, nn.ConvTranspose2d):
        return F.conv_transpose2d(x, weight, b, op.stride, op.padding, op.output_padding, op.groups, op.dilation)
    return F.conv2d(x, weight, b, op.stride, op.padding, op.dilation, op.groups)


def apply_op_transposed(op: OpModule, g: torch.Tensor, weight: torch.Tensor, in_shape: Sequence[int]) -> torch.Tensor:
    """The adjoint of the op's linear part applied to ``g`` ``[B, *out]``: ``[B, *in_shape]`` (no graph needed).

    For a linear op ``g @ W``; for a convolution the transposed convolution whose output padding
    restores ``in_shape``; for a transposed convolution the convolution with the same weight.
    """
    if isinstance(op, nn.Linear):
        return g @ weight if g.dim() == 2 else F.linear(g, weight.t())
    if isinstance(op, nn.ConvTranspose2d):
        return F.conv2d(g, weight, None, op.stride, op.padding, op.dilation, op.groups)
    output_padding = _conv_output_padding(op, g.shape[-2:], in_shape[-2:])
    return F.conv_transpose2d(g, weight, None, op.stride, op.padding, output_padding, op.groups, op.dilation)


def _conv_output_padding(op: nn.Conv2d, out_hw: Sequence[int], in_hw: Sequence[int]) -> tuple[int, int]:
    """The output padding that makes ``conv_transpose2d`` return the conv's input size (strided convs lose it)."""
    padding = []
    for size_out, size_in, stride, pad, dil, k in zip(out_hw, in_hw, op.stride, op.padding, op.dilation, op.kernel_size):
        padding.append(int(size_in) - ((int(size_out) - 1) * stride - 2 * pad + dil * (k - 1) + 1))
    return padding[0], padding[1]


class _KnownOutput(torch.autograd.Function):
    """``op(x)`` whose value was computed before (without a graph): the forward returns it, the
    backward is the op's usual one. Saves recomputing the input layer's op in the one
    differentiable evaluation of f, when the simulation already computed it."""

    @staticmethod
    def forward(ctx, value, x, weight, bias, op):  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.op = op
        ctx.has_bias = bias is not None
        return value

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        op = ctx.op
        need_x, need_w, need_b = ctx.needs_input_grad[1], ctx.needs_input_grad[2], ctx.needs_input_grad[3]
        if isinstance(op, nn.Linear):
            flat_g, flat_x = grad.reshape(-1, grad.shape[-1]), x.reshape(-1, x.shape[-1])
            grad_x = (grad @ weight) if need_x else None
            grad_w = flat_g.t() @ flat_x if need_w else None
            grad_b = flat_g.sum(0) if need_b and ctx.has_bias else None
            return None, grad_x, grad_w, grad_b, None
        transposed = isinstance(op, nn.ConvTranspose2d)
        output_padding = op.output_padding if transposed else (0, 0)
        bias_sizes = [weight.shape[1] * op.groups if transposed else weight.shape[0]] if ctx.has_bias else None
        grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
            grad, x, weight, bias_sizes, op.stride, op.padding, op.dilation, transposed, output_padding, op.groups,
            [need_x, need_w, need_b and ctx.has_bias])
        return None, grad_x, grad_w, grad_b, None


def apply_op_known(op: OpModule, x: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``op(x)`` (with bias) equal to the precomputed ``value``, differentiable in x and the op's parameters."""
    if not torch.is_grad_enabled():
        return value
    return _KnownOutput.apply(value, x, op.weight, op.bias, op)
