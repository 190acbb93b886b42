"""Phantom gradients: a fixed budget of damped fixed-point steps (Jacobian-free for zero steps)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Optional

import torch

from ._checks import check_int, check_range
from ._driver import FixedPointSolver, IterState, _iterate, final_status
from ._maps import BatchedMap, Map
from ._options import check_call, check_call_options, check_flag
from ._fixed_point import damped_step
from ._result import ConvergenceError, SolverResult, SolverStatus

#: The tolerance handed to the driver: no residual but an exact zero meets it, so the driver
#: never stops the fixed budget early (a sample with a zero residual would not move anyway).
_NEVER = math.ulp(0.0)


@dataclasses.dataclass(frozen=True)
class Phantom(FixedPointSolver):
    """Phantom gradient: exactly ``steps`` damped steps z ← (1−λ) z + λ g(z) from z0, never fewer.

    In the backward the adjoint starts at z0 = ∂L/∂a, so ``steps=0`` returns ∂L/∂a itself, the
    Jacobian-free gradient (phantom, steps=0; JFB, Fung et al. 2022), and k steps give
    v_k = Mᵏ u + λ Σ_{i<k} Mⁱ u with M = (1−λ) I + λ J_fᵀ, u = ∂L/∂a: the gradient of
    backpropagating through f(a*) and then k damped steps, an unrolled phantom gradient (Geng
    et al. 2021, "On training implicit models"; with λ = 1 it is torchdeq's ``grad=k+1``).
    It is biased, exact only as k → ∞ for a contractive damped map. The budget is the method,
    so ``tol`` never stops it; it only judges the result. A solve costs k + 1 evaluations: each
    step's image feeds the next step, and the last one, g(z_k), measures the residual reported
    at the returned z_k (with k = 0 that one evaluation is all the work). The status is
    ``SUCCESS`` only when every measured residual meets ``tol``; otherwise ``NONFINITE`` when
    one overflowed, ``DIVERGED`` when one grew beyond ``divergence_factor`` times its initial
    value (the budget is spent all the same), else ``BUDGET``. The returned z is always the
    last iterate (``return_best`` cannot be True): that is the estimator. ``check_every`` is
    refused: there is nothing to check before the end of the budget.

    Args:
        steps: k, the number of damped steps (0 is the Jacobian-free gradient).
        damping: λ in (0, 1]; 1 (torchdeq's default ``tau``) is the plain truncated Neumann
            series, torchdeq recommends 0.5–0.7 for multiscale DEQs.
    """

    NAME: ClassVar[str] = "phantom"

    steps: int = 5
    damping: float = 1.0

    def __post_init__(self) -> None:
        check_int("phantom", "steps", self.steps, minimum=0)
        check_range("phantom", "damping", self.damping, 0.0, 1.0)

    def init(self, g: BatchedMap, z0: torch.Tensor, gz0: torch.Tensor) -> IterState:
        return IterState(z0, gz0)

    def step(self, g: BatchedMap, state: IterState) -> IterState:
        return damped_step(g, state, self.damping)

    def check_budget(self, max_iter: int, *, setting: str = "max_iter") -> None:
        """Refuse ``steps`` above ``max_iter`` (named ``setting``): the cap would silently cut the budget."""
        if self.steps > max_iter:
            raise ValueError(
                f"phantom: its option `steps={self.steps}` exceeds `{setting}`={max_iter}; raise `{setting}` or lower "
                "the option steps"
            )

    #: ``check_every`` is refused: the budget is never cut short, so there is nothing to check early.
    ACCEPTED_CALL_OPTIONS: ClassVar[tuple[str, ...]] = ("throw", "return_best", "divergence_factor")

    def check_call_options(self, *, throw: Any = False, check_every: Any = None, return_best: Any = False,
                           divergence_factor: Any = 1e6) -> None:
        """Refuse ``check_every`` (whatever its value) and ``return_best=True``; check the others."""
        if check_every is not None:
            raise ValueError(
                "phantom: `check_every` cannot be honoured: a fixed budget of `steps` is checked once, at its end; "
                "leave it out"
            )
        check_call_options(self.owner, throw=throw, return_best=return_best, divergence_factor=divergence_factor)
        if return_best:
            raise ValueError("phantom: `return_best` must be False: phantom returns its last iterate by definition")

    def __call__(  # type: ignore[override]
        self,
        g: Map,
        z0: torch.Tensor,
        *,
        max_iter: int,
        tol: float,
        stop_mode: str = "rel",
        throw: bool = False,
        check_every: Optional[int] = None,
        return_best: bool = False,
        divergence_factor: float = 1e6,
        coupled: bool = False,
        **options: Any,
    ) -> SolverResult:
        """Take exactly ``steps`` damped steps of ``z = g(z)`` from ``z0: [B, ...]``.

        Arguments as for every solver, except: ``max_iter`` must be at least ``steps`` (the
        budget is ``steps``, not ``max_iter``); ``check_every`` is refused (the budget is never
        cut short, so only the end is checked); ``return_best`` must be False; ``tol`` only
        decides ``converged`` and the status.
        """
        check_call(z0, max_iter, tol, stop_mode, 1)
        check_flag("coupled", coupled)
        self.check_call_options(throw=throw, check_every=check_every, return_best=return_best,
                                divergence_factor=divergence_factor)
        solver = self.with_options(**options)
        solver.check_budget(max_iter)
        # One check, after the last step: the driver then stops only at the end of the budget.
        with torch.no_grad():
            result = _iterate(
                solver, g, z0, max_iter=solver.steps, tol=_NEVER, stop_mode=stop_mode,
                check_every=max(solver.steps, 1), return_best=False, divergence_factor=divergence_factor,
                coupled=coupled,
            )
        converged = result.residual <= tol
        result = dataclasses.replace(
            result, converged=converged, tol=float(tol),
            # The driver's evidence kept: some sample diverged if it said so.
            status=final_status(converged, ~torch.isfinite(result.residual),
                                torch.full_like(converged, result.status is SolverStatus.DIVERGED), budget=True),
        )
        if throw and not result.success:
            raise ConvergenceError(result)
        return result
