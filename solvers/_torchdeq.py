"""torchdeq's solvers behind this registry's interface, as the established baseline.

torchdeq 0.1.0 returns ``(z, trajectory, info)`` with no convergence flag, reports the step of
the lowest residual rather than the work done, ignores unknown options, and treats a 1-D
tensor as that many scalar problems. The adapter always hands it ``[B, D]`` tensors, rejects
options its solver does not take, counts the evaluations it makes, and measures the residual
at the returned point with one more evaluation (counted in ``n_evals``).

Of the driver's call options it honours ``throw``, ``return_best`` (torchdeq returns its
lowest-residual iterate; ``return_best=False`` becomes torchdeq's ``return_final=True``, which
also runs the whole budget) and ``divergence_factor`` (judged on torchdeq's residual trace and
the measured final residual against the measured one at ``z0``); it refuses ``check_every``,
since torchdeq checks after every step and cannot be told otherwise.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Optional

import torch

from ._driver import final_status
from ._maps import BatchedMap, first_evaluation, residuals
from ._options import check_call, check_call_options, check_flag, split_solver_options, unknown_options
from ._result import ConvergenceError, SolverResult

# Arguments the adapter sets itself; everything else in the torchdeq signature is an option.
# ``return_final`` is the call option ``return_best`` (negated), so it has one name here.
_MANAGED = {"func", "x0", "max_iter", "tol", "stop_mode", "indexing", "kwargs", "return_final"}


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

    #: ``check_every`` is refused: torchdeq checks after every step.
    ACCEPTED_CALL_OPTIONS = ("throw", "return_best", "divergence_factor")

    @property
    def owner(self) -> str:
        """The registry's name, for messages."""
        return f"torchdeq_{self.torchdeq_name}"

    def check_call_options(self, *, throw: Any = False, check_every: Any = None, return_best: Any = True,
                           divergence_factor: Any = 1e6) -> None:
        """Refuse ``check_every`` (whatever its value); check the others."""
        if check_every is not None:
            raise ValueError(
                f"{self.owner}: `check_every` cannot be honoured: torchdeq checks convergence after every step; "
                "leave it out"
            )
        check_call_options(self.owner, throw=throw, return_best=return_best, divergence_factor=divergence_factor)

    def with_options(self, **options: Any) -> "TorchDEQSolver":
        """A copy with some of torchdeq's options set; unknown names raise ``ValueError``."""
        allowed = self.option_names
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise unknown_options(self.owner, unknown, allowed, self.ACCEPTED_CALL_OPTIONS)
        if not options:
            return self
        return dataclasses.replace(self, options=tuple(sorted({**dict(self.options), **options}.items())))

    def split_options(self, options: dict[str, Any]) -> tuple["TorchDEQSolver", dict[str, Any]]:
        """``configure`` for this solver: (a copy with torchdeq's options set, the call options)."""
        return split_solver_options(self, options)

    @property
    def description(self) -> str:
        """One line for listings."""
        return f"torchdeq 0.1.0 `{self.torchdeq_name}` through an adapter (the baseline for comparisons)"

    def __call__(
        self, g, z0: torch.Tensor, *, max_iter: int, tol: float, stop_mode: str = "rel",
        throw: bool = False, check_every: Optional[int] = None, return_best: bool = True,
        divergence_factor: float = 1e6, coupled: bool = False, **options: Any,
    ) -> SolverResult:
        """Solve ``z = g(z)`` with torchdeq; same contract as the registry's own solvers (a coupled
        batch is handed to torchdeq as one flat problem; ``check_every`` is refused, see the module)."""
        check_call(z0, max_iter, tol, stop_mode, 1)
        check_flag("coupled", coupled)
        self.check_call_options(throw=throw, check_every=check_every, return_best=return_best,
                                divergence_factor=divergence_factor)
        merged = dict(self.with_options(**options).options)
        shape = z0.shape
        g_flat = BatchedMap(g, shape, coupled=coupled)
        z0f = z0.detach().reshape(1 if coupled else shape[0], -1)
        with torch.no_grad():
            gz0 = first_evaluation(g_flat, z0f)
            start = residuals(z0f.reshape(shape[0], -1), gz0.reshape(shape[0], -1))[0]
            # torchdeq starts over from z0 and evaluates g there again itself.
            z, _, info = self._function()(
                g_flat, z0f, max_iter=max_iter, tol=tol, stop_mode=stop_mode, return_final=not return_best,
                **merged,
            )
            n_solver_evals = g_flat.n_evals
            gz = g_flat(z.reshape(z0f.shape))
            z = z.reshape(shape[0], -1)
            abs_res, rel_res = residuals(z, gz.reshape(shape[0], -1))
        best = abs_res if stop_mode == "abs" else rel_res
        converged = best <= tol
        nonfinite = ~torch.isfinite(best)
        # torchdeq's trace starts with a placeholder (1e8) and then holds each step's residuals,
        # per row of what it was given (one row for a coupled batch).
        limit = divergence_factor * start
        diverged = abs_res > limit
        if info["abs_trace"].shape[1] > 1:
            peak = info["abs_trace"][:, 1:].amax(dim=1)
            # A coupled batch's trace is of the one flat problem: compared with the flat ‖g(z0) − z0‖.
            diverged |= (peak > limit.norm()).expand_as(diverged) if coupled else peak > limit
        result = SolverResult(
            z=z.reshape(shape), n_evals=g_flat.n_evals, n_steps=n_solver_evals - 2,
            abs_residual=abs_res, rel_residual=rel_res, converged=converged,
            trace=info[f"{stop_mode}_trace"].max(dim=0).values,
            status=final_status(converged, nonfinite, diverged),
            stop_mode=stop_mode, tol=float(tol),
        )
        if throw and not result.success:
            raise ConvergenceError(result)
        return result
