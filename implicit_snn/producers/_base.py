"""What an equilibrium producer is, and what it hands back."""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class ImplicitNetwork(Protocol):
    """The network side of the contract: a fixed-point map and what it needs.

    ``fixed_point_map(a, *f_args)`` is f, returning a tensor shaped like ``a``;
    ``map_inputs(x)`` turns a batch of inputs into the extra arguments of f (raw inputs such as
    the averaged input x̄, never a tensor with a graph: f applies its own parameters);
    ``initial_state(x)`` is the starting point ``[B, ...]`` of an iterative producer.
    Optionally, ``differentiable_args(*f_args)`` returns the arguments for the one differentiable
    evaluation of f (``FeedbackSNN`` switches batch norm to batch statistics there), and
    ``couples_samples(*f_args)`` says whether f with those arguments mixes the samples of the
    batch (solvers then treat the batch as one problem).
    Spiking networks add their own simulation hooks for the ``if``/``lif`` producers.
    """

    def fixed_point_map(self, a: torch.Tensor, *f_args: Any) -> torch.Tensor: ...

    def map_inputs(self, x: torch.Tensor) -> tuple[Any, ...]: ...

    def initial_state(self, x: torch.Tensor) -> torch.Tensor: ...


def couples_samples(network: ImplicitNetwork, f_args: tuple[Any, ...]) -> bool:
    """Whether the network says that f with these arguments mixes the samples of the batch (False
    for a network that does not say: its samples are independent problems)."""
    couples = getattr(network, "couples_samples", None)
    return bool(couples(*f_args)) if couples is not None else False


@dataclasses.dataclass(frozen=True)
class Equilibrium:
    """A producer's output.

    Attributes:
        a: the equilibrium ``[B, ...]`` (no graph), e.g. average firing rates.
        f_args: the extra arguments of f at this equilibrium, ``f(a, *f_args)``.
        stats: plain numbers describing the forward computation, for logging.
        extras: optional analysis outputs (per-layer rates, spike trains, the solver result).
    """

    a: torch.Tensor
    f_args: tuple[Any, ...]
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)
    extras: dict[str, Any] = dataclasses.field(default_factory=dict)


class Producer(abc.ABC):
    """Finds an equilibrium of a network's fixed-point map for a batch of inputs, without grad."""

    @abc.abstractmethod
    def __call__(self, network: ImplicitNetwork, x: torch.Tensor) -> Equilibrium:
        """The equilibrium of ``network`` for inputs ``x``; computed under ``torch.no_grad()``."""
