"""The analytic producer: the ANN fixed point of f, found by a registry solver."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from solvers import check_budget, check_settings, configure, get_solver, nonlinear_solvers, solves_nonlinear

from ._base import Equilibrium, ImplicitNetwork, Producer, couples_samples


@dataclasses.dataclass(frozen=True)
class AnalyticProducer(Producer):
    """The fixed point of f itself, a = f(a, x), found by a forward solver (an implicit ANN).

    Args:
        f_solver: a registered solver name or a solver object.
        f_max_iter: cap on forward solver steps.
        f_tol: forward tolerance, in ``f_stop_mode``.
        f_stop_mode: ``"rel"`` or ``"abs"``.
        f_options: the forward solver's own options, e.g. ``{"memory": 10}``, and the driver's
            call options (``throw``, ``check_every``, ``return_best``, ``divergence_factor``), in
            one dict split by name (``solvers.configure``) and checked when the producer is built.
    """

    f_solver: Any = "broyden"
    f_max_iter: int = 50
    f_tol: float = 1e-5
    f_stop_mode: str = "rel"
    f_options: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        check_settings(self.f_max_iter, self.f_tol, self.f_stop_mode, prefix="f_")
        if not solves_nonlinear(self.f_solver):
            name = self.f_solver if isinstance(self.f_solver, str) else type(self.f_solver).__name__
            raise ValueError(
                f"`f_solver` {name!r} solves affine maps only (z = A z + c) and the analytic forward map is nonlinear; "
                f"use one of {', '.join(nonlinear_solvers())}"
            )
        solver, _ = configure(get_solver(self.f_solver), self.f_options)  # bad options fail here, not mid-training
        check_budget(solver, self.f_max_iter, prefix="f_")

    def __call__(self, network: ImplicitNetwork, x: torch.Tensor) -> Equilibrium:
        with torch.no_grad():
            is_spike_train = getattr(network, "is_spike_train", None)
            if is_spike_train is not None and is_spike_train(x):
                x = x.mean(dim=1)  # the analytic network sees the plain time average of a spike train
            f_args = network.map_inputs(x)
            coupling = {"coupled": True} if couples_samples(network, f_args) else {}
            solver, call_options = configure(get_solver(self.f_solver), self.f_options)
            result = solver(
                lambda a: network.fixed_point_map(a, *f_args),
                network.initial_state(x),
                max_iter=self.f_max_iter, tol=self.f_tol, stop_mode=self.f_stop_mode, **coupling, **call_options,
            )
        stats = {f"forward_{key}": value for key, value in result.summary().items()}
        return Equilibrium(a=result.z, f_args=f_args, stats=stats, extras={"solver_result": result})
