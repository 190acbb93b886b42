"""torchdeq's solvers behind this registry's interface, as the established baseline.

torchdeq 0.1.0 returns ``(z, trajectory, info)`` with no convergence flag, reports the step of
the lowest residual rather than the work done, ignores unknown options, and treats a 1-D
tensor as that many scalar problems. The adapter always hands it ``[B, D]`` tensors, rejects
options its solver does not take, counts the evaluations it makes, and measures the residual
at the returned point with one more evaluation (counted in ``n_evals``).
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import torch

from ._driver import (
    BatchedMap, check_call, check_flag, final_status, first_evaluation, residuals,
)
from ._result import ConvergenceError, SolverResult

# Arguments the adapter sets itself; everything else in the torchdeq signature is an option.
_MANAGED = {"func", "x0", "max_iter", "tol", "stop_mode", "indexing", "kwargs"}


@dataclasses.dataclass(frozen=True)
class TorchDEQSolver:
    """Adapter calling ``torchdeq.solver.get_solver(torchdeq_name)`` with [B, D] tensors."""

    torchdeq_name: str
    options: tuple[tuple[str, Any], ...] = ()

    def _function(self):
        from torchdeq.solver import get_solver as torchdeq_get_solver

        return torchdeq_get_solver(self.torchdeq_name)

    @property
    def option_names(self) -> list[str]:
        """The options torchdeq's solver accepts (its keyword parameters we do not manage)."""
        params = inspect.signature(self._function()).parameters
        return [p for p in params if p not in _MANAGED]

    @property
    def description(self) -> str:
        """One line for listings."""
        return f"torchdeq 0.1.0 `{self.torchdeq_name}` through an adapter (the baseline for comparisons)"

    def __call__(
        self, g, z0: torch.Tensor, *, max_iter: int, tol: float, stop_mode: str = "rel",
        throw: bool = False, check_every: int = 1, coupled: bool = False, **options: Any,
    ) -> SolverResult:
        """Solve ``z = g(z)`` with torchdeq; same contract as the registry's own solvers (a coupled
        batch is handed to torchdeq as one flat problem)."""
        check_call(z0, max_iter, tol, stop_mode, check_every)
        check_flag("coupled", coupled)
        allowed = self.option_names
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise TypeError(f"torchdeq_{self.torchdeq_name} got unknown option(s) {unknown}; its options are {allowed}")
        merged = {**dict(self.options), **options}
        shape = z0.shape
        g_flat = BatchedMap(g, shape, coupled=coupled)
        z0f = z0.detach().reshape(1 if coupled else shape[0], -1)
        with torch.no_grad():
            first_evaluation(g_flat, z0f)
            # torchdeq starts over from z0 and evaluates g there again itself.
            z, _, info = self._function()(
                g_flat, z0f, max_iter=max_iter, tol=tol, stop_mode=stop_mode, **merged
            )
            n_solver_evals = g_flat.n_evals
            gz = g_flat(z.reshape(z0f.shape))
            z = z.reshape(shape[0], -1)
            abs_res, rel_res = residuals(z, gz.reshape(shape[0], -1))
        best = abs_res if stop_mode == "abs" else rel_res
        converged = best <= tol
        nonfinite = ~torch.isfinite(best)
        result = SolverResult(
            z=z.reshape(shape), n_evals=g_flat.n_evals, n_steps=n_solver_evals - 2,
            abs_residual=abs_res, rel_residual=rel_res, converged=converged,
            trace=info[f"{stop_mode}_trace"].max(dim=0).values,
            status=final_status(converged, nonfinite, torch.zeros_like(converged)),
            stop_mode=stop_mode, tol=float(tol),
        )
        if throw and not result.success:
            raise ConvergenceError(result)
        return result
