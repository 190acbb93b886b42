"""NIR's nodes as PyTorch steps, written from NIR's definitions (forward Euler with step dt).

Each module takes one step: ``module(input, state) -> (output, state)`` with ``state`` None at
the first step. Shapes are per sample in NIR; here every tensor has a leading batch dimension.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def require_nir() -> Any:
    """The ``nir`` package, or a one-line error saying how to install it."""
    try:
        import nir
    except ModuleNotFoundError:
        raise ModuleNotFoundError("NIR export and import need the `nir` package: pip install 'implicit-snn[nir]'") \
            from None
    return nir


def _tensor(array: Any, dtype: torch.dtype) -> torch.Tensor:
    return torch.as_tensor(np.asarray(array), dtype=dtype)


class Stateless(nn.Module):
    """A node without state: ``fn(input)``."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        return self.fn(x), None


class LeakyIntegrator(nn.Module):
    """NIR ``LI``: τ v̇ = (v_leak − v) + R I, so v ← v + dt/τ·(v_leak − v + R·I); output v."""

    def __init__(self, tau: torch.Tensor, r: torch.Tensor, v_leak: torch.Tensor, dt: float):
        super().__init__()
        self.register_buffer("rate", dt / tau)
        self.register_buffer("r", r)
        self.register_buffer("v_leak", v_leak)

    def forward(self, x: torch.Tensor, state: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        v = torch.zeros_like(x) if state is None else state
        v = v + self.rate * (self.v_leak - v + self.r * x)
        return v, v


class Integrator(nn.Module):
    """NIR ``I``: v̇ = R I, so v ← v + dt·R·I; output v."""

    def __init__(self, r: torch.Tensor, dt: float):
        super().__init__()
        self.register_buffer("r", r)
        self.dt = dt

    def forward(self, x: torch.Tensor, state: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        v = torch.zeros_like(x) if state is None else state
        v = v + self.dt * self.r * x
        return v, v


class Fire(nn.Module):
    """NIR ``LIF``/``IF``: the integrator's step, a spike where v crosses ``threshold``, v ← v_reset there."""

    def __init__(self, integrator: nn.Module, threshold: torch.Tensor, v_reset: torch.Tensor, at_equality: bool):
        super().__init__()
        self.integrator = integrator
        self.register_buffer("threshold", threshold)
        self.register_buffer("v_reset", v_reset)
        self.at_equality = at_equality

    def forward(self, x: torch.Tensor, state: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        v, _ = self.integrator(x, state)
        fired = v >= self.threshold if self.at_equality else v > self.threshold
        spikes = fired.to(v.dtype)
        return spikes, torch.where(fired, self.v_reset.expand_as(v), v)


def step_module(node: Any, *, dt: float, dtype: torch.dtype, at_equality: bool, name: str) -> nn.Module:
    """The step of one NIR node; an unsupported node is a one-line ``ValueError`` naming it and its type."""
    kind = type(node).__name__

    def t(array: Any) -> torch.Tensor:
        return _tensor(array, dtype)

    if kind in ("Input", "Output", "Identity"):
        return Stateless(lambda x: x)
    if kind == "Affine":
        weight, bias = t(node.weight), t(node.bias)
        return Stateless(lambda x: F.linear(x, weight, bias))
    if kind == "Linear":
        weight = t(node.weight)
        return Stateless(lambda x: F.linear(x, weight))
    if kind == "Scale":
        scale = t(node.scale)
        return Stateless(lambda x: x * scale)
    if kind == "Flatten":  # NIR's dimensions are per sample: dimension d is the batch's d + 1
        start, end = int(node.start_dim), int(node.end_dim)
        return Stateless(lambda x: x.flatten(start + 1 if start >= 0 else start, end + 1 if end >= 0 else end))
    if kind == "Conv2d":
        return Stateless(_conv2d(node, t))
    if kind == "Threshold":
        threshold = t(node.threshold)
        if at_equality:
            return Stateless(lambda v: (v >= threshold).to(v.dtype))
        return Stateless(lambda v: (v > threshold).to(v.dtype))
    if kind == "LI":
        return LeakyIntegrator(t(node.tau), t(node.r), t(node.v_leak), dt)
    if kind == "I":
        return Integrator(t(node.r), dt)
    if kind == "LIF":
        return Fire(LeakyIntegrator(t(node.tau), t(node.r), t(node.v_leak), dt), t(node.v_threshold),
                    t(node.v_reset), at_equality)
    if kind == "IF":
        return Fire(Integrator(t(node.r), dt), t(node.v_threshold), t(node.v_reset), at_equality)
    raise ValueError(f"NIR node {name!r} of type {kind} is not supported; supported: Input, Output, Identity, Affine, "
                     "Linear, Scale, Flatten, Conv2d, Threshold, LI, I, LIF, IF")


def _conv2d(node: Any, t: Callable[[Any], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    weight, bias = t(node.weight), t(node.bias)
    stride, dilation, groups = _pair(node.stride), _pair(node.dilation), int(node.groups)
    padding = node.padding if isinstance(node.padding, str) else _pair(node.padding)
    return lambda x: F.conv2d(x, weight, bias, stride, padding, dilation, groups)


def _pair(value: Any) -> tuple[int, int]:
    array = np.atleast_1d(np.asarray(value)).astype(int)
    return (int(array[0]), int(array[-1]))
