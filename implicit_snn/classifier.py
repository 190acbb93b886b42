"""An implicit classifier: equilibrium producer → implicit gradient → linear read-out."""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import nn

from . import bptt
from ._adjoint import ImplicitAdjoint
from .producers import Producer, couples_samples, get_producer


class ImplicitClassifier(nn.Module):
    """``model(x) -> logits``: a linear classifier on the flattened equilibrium of ``network``.

    The producer finds the equilibrium a* without grad; ``ImplicitAdjoint`` attaches the implicit
    gradient through one differentiable evaluation of the network's fixed-point map; the
    classifier reads a* (the producer's value). Producer and backward solver can be swapped at
    any time with ``set_producer`` / ``set_backward``, the training method with ``set_method``.

    With ``method="bptt"`` a forward with grad enabled instead unrolls the producer's simulation
    (its ``time_steps`` and ``leak``; ``if``/``lif`` only) differentiably (``implicit_snn.bptt``):
    backpropagation through time with a surrogate spike derivative, everything else identical.
    Under ``no_grad`` both methods run the producer, whose numbers BPTT's forward equals.

    Args:
        network: an ``ImplicitNetwork`` (e.g. ``FeedbackSNN``) with ``layer_shapes``.
        num_classes: outputs of the classifier.
        producer: a registered producer name or a ``Producer``; ``producer_options`` (a dict)
            build it.
        b_solver: a registered solver name or solver object for the adjoint solve.
        b_max_iter: the adjoint solve's step cap (>= 1).
        b_tol: the adjoint solve's tolerance.
        b_stop_mode: ``"rel"`` or ``"abs"``, the residual compared with ``b_tol``.
        b_options: the solver's own options and the driver's call options (``throw``,
            ``check_every``, ``return_best``, ``divergence_factor``) in one dict, and
            ``ImplicitAdjoint``'s ``vjp``, all checked now (see ``ImplicitAdjoint``).
        method: ``"ide"`` (implicit differentiation, default) or ``"bptt"``.
        surrogate: BPTT's surrogate derivative, ``"sigmoid"`` or ``"rectangular"``.
        surrogate_slope: its slope; None: the surrogate's default, 4 for sigmoid, 1 for rectangular.
        detach_reset: whether BPTT leaves the reset out of the gradient (see ``bptt.unroll``).

    Attributes:
        last_forward: the producer's statistics of the most recent forward (e.g. firing rates).
        last_backward: the ``SolverResult`` of the most recent backward solve, or None (always
            None with ``method="bptt"``, which solves nothing).
    """

    def __init__(self, network: nn.Module, num_classes: int, *, producer: Any = "lif",
                 producer_options: Optional[dict[str, Any]] = None, b_solver: Any = "broyden",
                 b_max_iter: int = 30, b_tol: float = 1e-6, b_stop_mode: str = "rel",
                 b_options: Optional[dict[str, Any]] = None, method: str = "ide",
                 surrogate: str = "sigmoid", surrogate_slope: Optional[float] = None, detach_reset: bool = False):
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
        self.network = network
        self.classifier = nn.Linear(math.prod(network.layer_shapes[-1]), num_classes)
        self.set_producer(producer, producer_options)
        self.set_backward(b_solver, b_max_iter=b_max_iter, b_tol=b_tol, b_stop_mode=b_stop_mode, b_options=b_options)
        self.set_method(method, surrogate=surrogate, surrogate_slope=surrogate_slope, detach_reset=detach_reset)
        self.last_forward: dict[str, Any] = {}

    def set_producer(self, producer: Any, producer_options: Optional[dict[str, Any]] = None) -> None:
        """Use another equilibrium producer: a registered name with its ``producer_options`` (a
        dict, as in the constructor), or a ``Producer`` object (which takes no options)."""
        if producer_options is not None and not isinstance(producer_options, dict):
            raise TypeError(f"`producer_options` must be a dict, got {type(producer_options).__name__}")
        if isinstance(producer, Producer):
            if producer_options:
                raise TypeError("`producer_options` apply to a producer given by name, not to a Producer object")
        else:
            producer = get_producer(producer, **(producer_options or {}))
        if getattr(self, "method", "ide") == "bptt":
            bptt.spiking_settings(producer)  # BPTT unrolls this producer: it must be if or lif
        self.producer = producer

    METHODS = ("ide", "bptt")

    def set_method(self, method: str = "ide", *, surrogate: str = "sigmoid", surrogate_slope: Optional[float] = None,
                   detach_reset: bool = False) -> None:
        """Train by ``"ide"`` (implicit differentiation) or ``"bptt"`` (surrogate-gradient BPTT of the
        producer's simulation); the surrogate settings are checked now and used by ``"bptt"`` only."""
        if method not in self.METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {', '.join(self.METHODS)}")
        if not isinstance(detach_reset, bool):
            raise ValueError(f"detach_reset must be true or false, got {detach_reset!r}")
        chosen = bptt.get_surrogate(surrogate, surrogate_slope)
        if method == "bptt":
            bptt.spiking_settings(self.producer)
        self.method, self.surrogate, self.detach_reset = method, chosen, detach_reset

    def set_backward(self, b_solver: Any = "broyden", *, b_max_iter: int = 30, b_tol: float = 1e-6,
                     b_stop_mode: str = "rel", b_options: Optional[dict[str, Any]] = None) -> None:
        """Use another backward solver or settings, named as in the constructor (checked now, not at
        the first backward)."""
        if b_options is not None and not isinstance(b_options, dict):
            raise TypeError(f"`b_options` must be a dict, got {type(b_options).__name__}")
        options = dict(b_options or {})
        vjp = options.pop("vjp", "auto")  # ImplicitAdjoint's own setting, carried in the same dict
        self.adjoint = ImplicitAdjoint(b_solver, b_max_iter=b_max_iter, b_tol=b_tol, b_stop_mode=b_stop_mode,
                                       b_options=options, vjp=vjp)

    @property
    def fixed_point_map(self):
        """The network's fixed-point map f(a, *f_args)."""
        return self.network.fixed_point_map

    @property
    def last_backward(self):
        """The adjoint solve's ``SolverResult`` of the latest IDE backward; None with BPTT."""
        return None if self.method == "bptt" else self.adjoint.last_result

    def unrolled(self, x: torch.Tensor) -> torch.Tensor:
        """BPTT's read-out rates ``[B, *layer_shapes[-1]]`` for ``x``: the producer's simulation,
        unrolled with autograd (``bptt.unroll``); sets ``last_forward`` as the producer does."""
        time_steps, leak = bptt.spiking_settings(self.producer)
        self.producer.network_vth(self.network)  # the producer's vth, if set, must be the network's
        # The producer's sim_precision "bf16" is, for BPTT, the standard mixed precision: its products
        # (and their saved activations and gradients) under bfloat16 autocast, the rest in float32.
        low = torch.bfloat16 if self.producer.precision(x.device) == "bf16" else None
        out = bptt.unroll(self.network, x, time_steps=time_steps, leak=leak, surrogate=self.surrogate,
                          detach_reset=self.detach_reset, autocast=low)
        self.last_forward = out.stats
        return out.a

    def equilibrium(self, x: torch.Tensor) -> torch.Tensor:
        """The equilibrium ``[B, *layer_shapes[-1]]`` for ``x``, carrying the implicit gradient."""
        eq = self.producer(self.network, x)
        self.last_forward = eq.stats
        if not torch.is_grad_enabled():
            return eq.a
        f_args = eq.f_args
        differentiable = getattr(self.network, "differentiable_args", None)
        if differentiable is not None:
            f_args = differentiable(*f_args)
        linearize = getattr(self.network, "linearized_map", None)
        return self.adjoint(self.network.fixed_point_map, eq.a, *f_args, linearize=linearize,
                            coupled=couples_samples(self.network, f_args))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes]`` for inputs ``x`` (static ``[B, *in]`` or spikes ``[B, T, *in]``)."""
        if self.method == "bptt" and torch.is_grad_enabled():
            return self.classifier(self.unrolled(x).flatten(1))
        # Without grad BPTT's forward is the producer's simulation: the faster no-grad one.
        return self.classifier(self.equilibrium(x).flatten(1))

    def num_parameters(self) -> int:
        """Trainable parameters (weights, biases, batch-norm affine parameters, α)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
