"""Backward solvers on a real training step, and the feedback weight against the convergence condition."""

from __future__ import annotations

import dataclasses
import statistics
from typing import Any, Sequence

import torch

import solvers

from .._ops import apply_op
from ..classifier import ImplicitClassifier
from .._adjoint import ImplicitAdjoint
from ._common import preserved
from ._step import FrozenStep


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


#: The spike-based backward's T when it is compared with iterative solvers: SPIDE's CIFAR budget
#: (``time_step_back``). A spike rate's error falls like 1/T, so the iterative solvers' step cap
#: (30) is far too short for it; at 250 steps it reaches gradient cosine 0.99998 and a worst
#: per-sample relative residual of 0.03 on a trained two-layer conv network with batch norm.
SPIDE_STEPS = 250


def backward_budget(name: str, b_max_iter: int, spide_steps: int = SPIDE_STEPS) -> int:
    """The step cap a compared backward solver gets: ``spide_steps`` for the spike-based solver
    (its T), ``b_max_iter`` for the others."""
    return spide_steps if name == "spide" else b_max_iter


def compare_backward(model: ImplicitClassifier, x: torch.Tensor, y: torch.Tensor, b_solvers: Sequence[str], *,
                     b_max_iter: int = 30, b_tol: float = 1e-6, spide_steps: int = SPIDE_STEPS,
                     reference: str = "broyden",
                     reference_max_iter: int = 200, reference_tol: float = 1e-7,
                     seed: int = 0, repeats: int = 3) -> tuple[list[BackwardOutcome], solvers.SolverResult]:
    """Each backward solver of ``b_solvers`` on the same training step (train mode, one forward:
    the same a*, dropout masks and weights for all), with ``b_max_iter`` (>= 1) and ``b_tol``;
    the spike-based ``spide`` runs ``spide_steps`` steps instead.

    Each solver's backward is run ``repeats`` times and its median time reported. Returns the outcomes and the reference solve's
    ``SolverResult`` (``reference`` with ``reference_max_iter`` and ``reference_tol``): its
    residual says how exact the reference is.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"`repeats` must be an int >= 1, got {repeats!r}")
    with preserved(model):
        step = FrozenStep.capture(model, x, y, seed)  # one forward: every solver differentiates the same a*
        ref_grad, _, ref_result = step.gradient(ImplicitAdjoint(reference, b_max_iter=reference_max_iter,
                                                                b_tol=reference_tol))
        rows = []
        for name in b_solvers:
            adjoint = ImplicitAdjoint(name, b_max_iter=backward_budget(name, b_max_iter, spide_steps), b_tol=b_tol)
            timed = [step.gradient(adjoint) for _ in range(repeats)]
            grad, result = timed[0][0], timed[0][2]
            elapsed = statistics.median(ms for _, ms, _ in timed)
            summary = result.summary()
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
