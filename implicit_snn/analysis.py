"""What a trained implicit classifier's solvers actually do: the questions behind ``implicit-snn analyze``.

* ``equilibrium_gap``: how far the SNN's average rates after T steps are from the equilibrium of
  f they are meant to approximate (supplement Theorems 1–2: the gap shrinks like 1/T), and
  whether the read-out's decision changes between the two.
* ``compare_backward``: every backward solver on the same training step of the model: VJPs,
  residuals, convergence, time, and how far its parameter gradient is from a tight solve.
* ``feedback_norm``: the feedback weight against the convergence condition ‖W‖₂ < V_th.

The model is never changed: each function restores its state (weights, batch-norm statistics,
power-iteration vectors, train/eval mode) before returning.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import statistics
import time
from typing import Any, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F

import solvers

from ._ops import apply_op
from .classifier import ImplicitClassifier


@contextlib.contextmanager
def _preserved(model: ImplicitClassifier) -> Iterator[dict[str, torch.Tensor]]:
    """Restore the model's state dict, mode, producer and backward on exit; yields the saved state dict."""
    state = copy.deepcopy(model.state_dict())
    training, producer, adjoint = model.training, model.producer, model.adjoint
    try:
        yield state
    finally:
        model.load_state_dict(state)
        model.train(training)
        model.producer, model.adjoint = producer, adjoint


def _sync(tensor: torch.Tensor) -> None:
    if tensor.is_cuda:
        torch.cuda.synchronize(tensor.device)


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


def _relative(difference: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-sample ‖difference‖ / ‖reference‖ (0/0 counts as 0)."""
    num = difference.flatten(1).norm(dim=1)
    den = reference.flatten(1).norm(dim=1)
    return torch.where(den > 0, num / den.clamp_min(torch.finfo(den.dtype).tiny), num)


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
    batches = list(batches)
    if not any(len(y) for _, y in batches):
        raise ValueError("the equilibrium gap needs at least one sample in `batches`")
    rows = []
    with _preserved(model):
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
                totals["residual"] += float(_relative(f(eq.a) - eq.a, eq.a).sum())
                totals["distance"] += float(_relative(eq.a - result.z, result.z).sum())
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


@dataclasses.dataclass(frozen=True)
class BackwardOutcome:
    """One backward solver's outcome on one problem (a training step of a model, or the demo's).

    Attributes:
        solver: its name.
        n_evals: VJPs of f spent by the adjoint solve.
        rel_residual: worst per-sample relative residual of the adjoint system at the answer.
        converged: fraction of samples that reached the tolerance.
        status: the solver's status name.
        grad_error: relative error ‖∇ − ∇_ref‖ / ‖∇_ref‖ of the parameter gradient it gives.
        milliseconds: median wall time of the backward pass (adjoint solve and the pass into θ).
    """

    solver: str
    n_evals: int
    rel_residual: float
    converged: float
    status: str
    grad_error: float
    milliseconds: float


def _training_step_gradient(model: ImplicitClassifier, state: dict[str, torch.Tensor], x: torch.Tensor,
                            y: torch.Tensor, seed: int) -> tuple[torch.Tensor, float]:
    """The flattened parameter gradient of one training step from ``state`` and its backward time (ms)."""
    model.load_state_dict(state)
    torch.manual_seed(seed)  # the same dropout masks for every solver
    loss = F.cross_entropy(model(x), y)
    params = [p for p in model.parameters() if p.requires_grad]
    _sync(loss)
    start = time.perf_counter()
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    _sync(loss)
    elapsed = 1e3 * (time.perf_counter() - start)
    flat = torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for p, g in zip(params, grads)])
    return flat, elapsed


def compare_backward(model: ImplicitClassifier, x: torch.Tensor, y: torch.Tensor, backwards: Sequence[str], *,
                     b_max_iter: int = 30, b_tol: float = 1e-6, reference: str = "broyden",
                     reference_max_iter: int = 200, reference_tol: float = 1e-7,
                     seed: int = 0, repeats: int = 3) -> tuple[list[BackwardOutcome], solvers.SolverResult]:
    """Each backward solver on the same training step (train mode, same dropout masks and weights).

    Each solver's step is run ``repeats`` times (after one untimed warm-up step of the reference)
    and its median backward time reported. Returns the outcomes and the reference solve's
    ``SolverResult`` (``reference`` with ``reference_max_iter`` and ``reference_tol``): its
    residual says how exact the reference is.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"`repeats` must be an int >= 1, got {repeats!r}")
    with _preserved(model) as state:
        model.train()
        model.set_backward(reference, b_max_iter=reference_max_iter, b_tol=reference_tol)
        ref_grad, _ = _training_step_gradient(model, state, x, y, seed)
        ref_result = model.last_backward
        rows = []
        for name in backwards:
            model.set_backward(name, b_max_iter=b_max_iter, b_tol=b_tol)
            timed = [_training_step_gradient(model, state, x, y, seed) for _ in range(repeats)]
            grad, elapsed = timed[0][0], statistics.median(t for _, t in timed)
            summary = model.last_backward.summary()
            rows.append(BackwardOutcome(
                solver=name, n_evals=int(summary["n_evals"]), rel_residual=float(summary["rel_residual_max"]),
                converged=float(summary["converged_fraction"]), status=str(summary["status"]),
                grad_error=float((grad - ref_grad).norm() / ref_grad.norm().clamp_min(1e-30)),
                milliseconds=elapsed,
            ))
    return rows, ref_result


def _operator_norm(op: torch.nn.Module, weight: torch.Tensor, input_shape: Sequence[int], iterations: int) -> float:
    """‖x ↦ op(x; weight)‖₂ on inputs of ``input_shape``, by power iteration on the operator and its adjoint."""
    gen = torch.Generator().manual_seed(0)
    v = torch.randn((1, *input_shape), generator=gen, dtype=weight.dtype).to(weight.device)
    v = v / v.norm()
    for _ in range(iterations):
        probe = v.clone().requires_grad_()
        with torch.enable_grad():
            out = apply_op(op, probe, weight, bias=False)
            (adjoint,) = torch.autograd.grad(out, probe, out.detach())
        v = adjoint / adjoint.norm().clamp_min(1e-30)
    return float(apply_op(op, v, weight, bias=False).norm())


def feedback_norm(model: ImplicitClassifier, *, iterations: int = 100) -> dict[str, Any]:
    """The feedback weight in use: its spectral norm, ‖W‖₂ / V_th (below 1 guarantees a unique
    equilibrium), the clipped α and the clip c.

    Linear feedback: the exact matrix norm. Convolutions: the norm the model constrains — of the
    kernel reshaped to [out, in·k·k] by default, of the convolution operator (by ``iterations``
    power steps) with ``operator_norm``, reported as ``operator_norm`` in either case too.
    """
    feedback = model.network.feedback
    with torch.no_grad():
        weight = feedback.effective_weight(update=False).detach()
        matrix_norm = float(torch.linalg.matrix_norm(weight.reshape(weight.shape[0], -1).double(), ord=2))
        op_norm = matrix_norm
        if not isinstance(feedback.op, torch.nn.Linear):
            op_norm = _operator_norm(feedback.op, weight, model.network.layer_shapes[-1], iterations)
    spectral = feedback.spectral
    constrained = op_norm if spectral is not None and spectral.operator_norm else matrix_norm
    vth = float(model.network.vth)
    alpha = None if spectral is None else max(-spectral.bound, min(float(spectral.alpha.detach()), spectral.bound))
    return {"norm": constrained, "operator_norm": op_norm, "norm_over_vth": op_norm / vth, "vth": vth,
            "alpha_clipped": alpha, "bound": None if spectral is None else spectral.bound}
