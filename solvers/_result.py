"""The result type every solver returns, its status codes, and the error raised on request."""

from __future__ import annotations

import dataclasses
import enum

import torch


class SolverStatus(enum.Enum):
    """How a solve ended. Each value is the message a user needs; success is the empty string."""

    SUCCESS = ""
    MAX_ITER = (
        "the solver reached `max_iter` before every sample met `tol`; increase `max_iter`, "
        "loosen `tol`, try another solver, or check that the map is contractive"
    )
    DIVERGED = (
        "the residual of some sample grew by more than `divergence_factor` times its initial "
        "value; the map is probably not contractive there (check the spectral norm of its "
        "Jacobian) or the solver needs damping"
    )
    NONFINITE = (
        "an iterate or its image became NaN or Inf; the map overflows along the solver's path "
        "(try `fixed_point` with `damping` < 1, or a smaller step)"
    )
    BUDGET = (
        "the solver ran its whole fixed budget, as asked (`tol` does not stop a fixed-budget method); "
        "its result is what that budget gives: the residual measured there is reported beside it"
    )
    NOT_AFFINE = (
        "the residual measured at the returned point misses `tol`, although the solver's affine "
        "recurrence (exact only for g(z) = A z + c) said it was met: the map is not affine; use a "
        "solver for nonlinear maps (broyden, anderson, fixed_point)"
    )


@dataclasses.dataclass(frozen=True)
class SolverResult:
    """What a fixed-point solve of z = g(z) produced, and how well.

    Residuals are measured at the returned ``z`` (never at an unreturned neighbour):
    ``abs_residual = ‖g(z) − z‖`` and ``rel_residual = abs_residual / ‖g(z)‖``, per sample,
    norms taken over all non-batch dimensions.

    Attributes:
        z: the solution, same shape as the initial guess ``[B, ...]``.
        n_evals: number of evaluations of ``g`` made (the unit of cost; one VJP in a backward).
        n_steps: number of solver steps taken.
        abs_residual: ``[B]`` absolute residuals at ``z``.
        rel_residual: ``[B]`` relative residuals at ``z``.
        converged: ``[B]`` bool, the residual chosen by ``stop_mode`` is at most ``tol``.
        trace: ``[n_steps + 1]`` largest per-sample residual (in ``stop_mode``) of the best
            iterates so far, after each step; stays on the device.
        status: why the solve ended (``SolverStatus.SUCCESS`` when every sample converged).
        stop_mode: ``"abs"`` or ``"rel"``, the residual compared with ``tol``.
        tol: the tolerance used.
        counters: a solver's own measurements beyond evaluations (e.g. the spiking solver's
            ``spike_events``); empty for most solvers.
    """

    z: torch.Tensor
    n_evals: int
    n_steps: int
    abs_residual: torch.Tensor
    rel_residual: torch.Tensor
    converged: torch.Tensor
    trace: torch.Tensor
    status: SolverStatus
    stop_mode: str
    tol: float
    counters: dict = dataclasses.field(default_factory=dict)

    @property
    def residual(self) -> torch.Tensor:
        """``[B]`` residuals in the solve's ``stop_mode``."""
        return self.rel_residual if self.stop_mode == "rel" else self.abs_residual

    @property
    def success(self) -> bool:
        """True when every sample converged."""
        return self.status is SolverStatus.SUCCESS

    def summary(self) -> dict[str, float | int | str]:
        """Plain numbers for logging: evaluations, worst residuals, fraction converged, status."""
        return {
            "n_evals": self.n_evals,
            "n_steps": self.n_steps,
            "abs_residual_max": float(self.abs_residual.max()),
            "rel_residual_max": float(self.rel_residual.max()),
            "converged_fraction": float(self.converged.double().mean()),
            "status": self.status.name,
        }


class ConvergenceError(RuntimeError):
    """Raised by a solve with ``throw=True`` that did not converge; ``.result`` holds the details."""

    def __init__(self, result: SolverResult):
        self.result = result
        n_bad = int((~result.converged).sum())
        worst = float(result.residual.max())
        super().__init__(
            f"{n_bad} of {result.converged.numel()} samples did not converge "
            f"(worst {result.stop_mode} residual {worst:.3e} > tol {result.tol:.1e} after "
            f"{result.n_evals} evaluations): {result.status.value}"
        )
