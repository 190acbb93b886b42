"""The simulation against its equilibrium: how far the spiking rates a_T are from a* of f."""

from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

import torch

import solvers

from ..classifier import ImplicitClassifier
from ._common import preserved, relative


@dataclasses.dataclass(frozen=True)
class EquilibriumGap:
    """The simulated rates a_T against the equilibrium a* of f, averaged over samples.

    Attributes:
        time_steps: T of the simulation.
        samples: number of samples measured.
        firing_rate: mean firing rate of the simulation.
        fixed_point_residual: mean of ‖f(a_T) − a_T‖ / ‖a_T‖ (0 at an equilibrium).
        distance: mean of ‖a_T − a*‖ / ‖a*‖.
        agreement: fraction of samples whose predicted class is the same from a_T and from a*.
        accuracy_simulated, accuracy_equilibrium: accuracy of the read-out on a_T and on a*.
        solve_converged: fraction of samples whose a* solve reached its tolerance.
    """

    time_steps: int
    samples: int
    firing_rate: float
    fixed_point_residual: float
    distance: float
    agreement: float
    accuracy_simulated: float
    accuracy_equilibrium: float
    solve_converged: float


@torch.no_grad()
def equilibrium_gap(model: ImplicitClassifier, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                    time_steps: Sequence[int], *, f_solver: str = "broyden", f_max_iter: int = 100,
                    f_tol: float = 1e-6) -> list[EquilibriumGap]:
    """For each T, the gap between the spiking producer's a_T and f's equilibrium a* (eval mode).

    a* is found by ``f_solver`` on f with the same inputs from the network's initial state (so for
    static inputs it is the same a* at every T); ``solve_converged`` says whether it met ``f_tol``
    (relative residual), so an unreliable a* shows.
    """
    if not hasattr(model.producer, "time_steps"):
        raise ValueError(f"the equilibrium gap needs a spiking producer (if, lif), the model has "
                         f"{type(model.producer).__name__}")
    if not solvers.solves_nonlinear(f_solver):
        raise ValueError(f"`f_solver` {f_solver!r} solves affine maps only and f is nonlinear; use one of "
                         f"{', '.join(solvers.nonlinear_solvers())}")
    batches = list(batches)
    if not any(len(y) for _, y in batches):
        raise ValueError("the equilibrium gap needs at least one sample in `batches`")
    rows = []
    with preserved(model):
        model.eval()
        network, solve = model.network, solvers.get_solver(f_solver)
        for steps in time_steps:
            producer = dataclasses.replace(model.producer, time_steps=int(steps))
            totals = dict(n=0, rate=0.0, residual=0.0, distance=0.0, agree=0, sim_ok=0, eq_ok=0, converged=0)
            for x, y in batches:
                eq = producer(network, x)

                def f(a: torch.Tensor) -> torch.Tensor:
                    return network.fixed_point_map(a, *eq.f_args)

                result = solve(f, network.initial_state(x), max_iter=f_max_iter, tol=f_tol)
                pred_sim = model.classifier(eq.a.flatten(1)).argmax(1)
                pred_eq = model.classifier(result.z.flatten(1)).argmax(1)
                totals["n"] += len(y)
                totals["rate"] += float(eq.stats["firing_rate"]) * len(y)
                totals["residual"] += float(relative(f(eq.a) - eq.a, eq.a).sum())
                totals["distance"] += float(relative(eq.a - result.z, result.z).sum())
                totals["agree"] += int((pred_sim == pred_eq).sum())
                totals["sim_ok"] += int((pred_sim == y).sum())
                totals["eq_ok"] += int((pred_eq == y).sum())
                totals["converged"] += int(result.converged.sum())
            n = totals["n"]
            rows.append(EquilibriumGap(
                time_steps=int(steps), samples=n, firing_rate=totals["rate"] / n,
                fixed_point_residual=totals["residual"] / n, distance=totals["distance"] / n,
                agreement=totals["agree"] / n, accuracy_simulated=totals["sim_ok"] / n,
                accuracy_equilibrium=totals["eq_ok"] / n, solve_converged=totals["converged"] / n,
            ))
    return rows
