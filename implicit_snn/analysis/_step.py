"""One training step frozen at its equilibrium, so that every backward differentiates the same a*."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Callable, ContextManager, Optional

import torch
import torch.nn.functional as F

from ..classifier import ImplicitClassifier
from ._common import timed_parameter_gradient


@dataclasses.dataclass
class FrozenStep:
    """A training step's equilibrium and all a backward needs to differentiate it: the model (train
    mode) and its state after the forward (power iteration moved, batch-norm statistics as the
    forward left them), a*, f's arguments (the same dropout masks and input statistics for every
    backward), the labels, and whether f couples the samples."""

    model: ImplicitClassifier
    state: dict
    a_star: torch.Tensor
    f_args: tuple
    y: torch.Tensor
    coupled: bool
    stats: dict = dataclasses.field(default_factory=dict)  # the producer's statistics of the forward

    @classmethod
    def capture(cls, model: ImplicitClassifier, x: torch.Tensor, y: torch.Tensor, seed: int) -> "FrozenStep":
        """Run the model's producer once on ``x`` (train mode, dropout masks drawn from ``seed``)."""
        model.train()
        torch.manual_seed(seed)
        with torch.no_grad():
            eq = model.producer(model.network, x)
        # After the producer: the power iteration has moved, and f's feedback weight must be the one it used.
        state = copy.deepcopy(model.state_dict())
        net = model.network
        coupled = bool(net.couples_samples(*net.differentiable_args(*eq.f_args)))
        model.load_state_dict(state)
        return cls(model, state, eq.a.detach(), tuple(eq.f_args), y, coupled, dict(eq.stats))

    def gradient(self, adjoint: Callable[..., torch.Tensor],
                 around: Optional[Callable[[], ContextManager[Any]]] = None) -> tuple[torch.Tensor, float, Any]:
        """The step's flattened parameter gradient with ``adjoint`` (an ``ImplicitAdjoint``), the
        backward's milliseconds, and the adjoint solve's result; ``around`` wraps the backward
        (a memory probe, say)."""
        model, net = self.model, self.model.network
        model.load_state_dict(self.state)  # the same buffers for every backward (batch-norm statistics)
        f_args = net.differentiable_args(*self.f_args)
        a = adjoint(net.fixed_point_map, self.a_star, *f_args, linearize=net.linearized_map, coupled=self.coupled)
        loss = F.cross_entropy(model.classifier(a.flatten(1)), self.y)
        flat, ms = timed_parameter_gradient(model, loss, around)
        return flat, ms, getattr(adjoint, "last_result", None)

    def in_float64(self) -> "FrozenStep":
        """The same step in float64: model, a*, f's arguments (the input op recomputed in float64)."""
        model = copy.deepcopy(self.model).double()
        model.load_state_dict(self.state)
        state = copy.deepcopy(model.state_dict())
        x_bar, pass_state = _convert(self.f_args, torch.float64)
        net = model.network
        if getattr(pass_state, "input_linear", None) is not None:
            with torch.no_grad():
                inputs = x_bar.flatten(1) if net.flatten_input else x_bar
                pass_state = dataclasses.replace(pass_state, input_linear=net.input_layer.linear(inputs))
        return FrozenStep(model, state, self.a_star.double(), (x_bar, pass_state), self.y, self.coupled, self.stats)


def _convert(value: Any, dtype: torch.dtype) -> Any:
    """Floating tensors (also inside tuples and dataclasses) converted to ``dtype``."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, tuple):
        return tuple(_convert(v, dtype) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{f.name: _convert(getattr(value, f.name), dtype)
                                             for f in dataclasses.fields(value)})
    return value
