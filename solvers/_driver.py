"""The one loop that runs every iterative solver: counting, stopping, best-so-far, statuses.

A solver only says how to start (``init``) and how to take one step (``step``); everything
a user relies on to trust a result (evaluation counts, per-sample residuals at the returned
iterate, convergence flags, divergence and NaN detection) lives here, once.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar, Optional

import torch

from ._maps import BatchedMap, Map, first_evaluation, is_declared_affine, residual_norms
from ._options import CALL_OPTIONS, check_call, check_call_options, check_flag, split_solver_options, unknown_options
from ._result import ConvergenceError, SolverResult, SolverStatus


@dataclasses.dataclass
class IterState:
    """The part of a solver's state the driver reads: the iterate ``z`` and ``gz = g(z)``, both [B, D].

    ``fz``, when a solver sets it, must be ``gz − z`` computed from these very tensors (solvers
    that need the residual anyway hand it over so that the driver does not form it again; the
    reported residuals are still measured, not estimated), or, on a map declared affine, the
    residual g(z) − z its recurrence carries (the Neumann series' term), which the difference
    gz − z would round away once it is below eps·‖z‖. A step must not modify an earlier
    state's ``z`` in place afterwards: the driver may keep it as the best iterate.
    """

    z: torch.Tensor
    gz: torch.Tensor
    fz: Optional[torch.Tensor] = dataclasses.field(default=None, kw_only=True)


def final_status(converged: torch.Tensor, nonfinite: torch.Tensor, diverged: torch.Tensor,
                 extrapolated_met: Optional[torch.Tensor] = None, *, budget: bool = False) -> SolverStatus:
    """The status of a solve from per-sample flags (one host sync); ``extrapolated_met``: [B]
    samples whose extrapolated residual met ``tol`` (solvers that assume an affine map);
    ``budget``: a fixed-budget method, whose unmet ``tol`` is ``BUDGET``, not ``MAX_ITER``."""
    failed = ~converged
    false_claim = torch.zeros_like(failed) if extrapolated_met is None else extrapolated_met & failed
    flags = torch.stack([failed.any(), (nonfinite & failed).any(), (diverged & failed).any(),
                         false_claim.any()]).tolist()
    if not flags[0]:
        return SolverStatus.SUCCESS
    if flags[1]:
        return SolverStatus.NONFINITE
    if flags[2]:
        return SolverStatus.DIVERGED
    if flags[3]:
        return SolverStatus.NOT_AFFINE
    return SolverStatus.BUDGET if budget else SolverStatus.MAX_ITER


class FixedPointSolver(abc.ABC):
    """Base of the registry's solvers: configuration in fields, ``init``/``step``, one shared driver.

    Subclasses are frozen dataclasses whose fields are their options, validated in
    ``__post_init__``. An instance is called as
    ``solver(g, z0, *, max_iter, tol, stop_mode="rel", **options) -> SolverResult``, where
    ``options`` are the call options (``CALL_OPTIONS``) and overrides of the fields for that
    call (unknown names raise ``ValueError``).
    """

    #: The name in messages (the registry's name of the built-in solvers).
    NAME: ClassVar[str] = ""
    #: The call options this solver honours (the others of ``CALL_OPTIONS`` it refuses).
    ACCEPTED_CALL_OPTIONS: ClassVar[tuple[str, ...]] = CALL_OPTIONS
    #: Whether the solver is meant for nonlinear maps; False for those built on linearity (Krylov
    #: spaces, series), which the analytic producer's forward refuses.
    SOLVES_NONLINEAR: ClassVar[bool] = True
    #: Whether a step's ``gz`` may be extrapolated by linearity instead of measured. The driver
    #: then measures g at the returned point, unless the map is declared affine (``AffineMap``).
    EXTRAPOLATES_IMAGE: ClassVar[bool] = False

    @property
    def owner(self) -> str:
        """The solver's name in messages."""
        return self.NAME or type(self).__name__

    @property
    def option_names(self) -> list[str]:
        """The solver's own options (its fields)."""
        return [f.name for f in dataclasses.fields(self)]  # type: ignore[arg-type]

    def check_call_options(self, **calls: Any) -> None:
        """Reject call options this solver cannot honour, or bad values, with a one-line ``ValueError``."""
        check_call_options(self.owner, **calls)

    def split_options(self, options: dict[str, Any]) -> tuple["FixedPointSolver", dict[str, Any]]:
        """``configure`` for this solver: (a copy with its own options applied, the call options)."""
        return split_solver_options(self, options)

    @abc.abstractmethod
    def init(self, g: BatchedMap, z0: torch.Tensor, gz0: torch.Tensor) -> IterState:
        """The starting state from the initial guess and its image, both [B, D]."""

    @abc.abstractmethod
    def step(self, g: BatchedMap, state: IterState) -> IterState:
        """One iteration; returns a state (a new one, or ``state`` updated) whose ``gz`` is ``g(z)``."""

    def finish(self, state: IterState) -> None:
        """Called once after the last step of a solve that returned normally; by default nothing.

        A solver may hand its buffers back for reuse here (the driver no longer reads ``state``).
        """

    def with_options(self, **options: Any) -> "FixedPointSolver":
        """A copy with some of its own options changed; unknown option names raise ``ValueError``."""
        names = self.option_names
        unknown = sorted(set(options) - set(names))
        if unknown:
            raise unknown_options(self.owner, unknown, names, self.ACCEPTED_CALL_OPTIONS)
        return dataclasses.replace(self, **options) if options else self  # type: ignore[type-var]

    def __call__(
        self,
        g: Map,
        z0: torch.Tensor,
        *,
        max_iter: int,
        tol: float,
        stop_mode: str = "rel",
        throw: bool = False,
        check_every: int = 1,
        return_best: bool = True,
        divergence_factor: float = 1e6,
        coupled: bool = False,
        **options: Any,
    ) -> SolverResult:
        """Solve ``z = g(z)`` for a batch ``z0: [B, ...]`` of independent problems.

        Args:
            g: map from ``[B, ...]`` to the same shape.
            z0: initial guess ``[B, ...]`` (finite, floating point).
            max_iter: maximum number of solver steps (usually one evaluation of ``g`` each,
                after the one at ``z0``).
            tol: a sample has converged when its residual in ``stop_mode`` is at most ``tol``.
            stop_mode: ``"abs"`` for ``‖g(z) − z‖``, ``"rel"`` for that over ``‖g(z)‖``.
            throw: raise ``ConvergenceError`` instead of returning a failed result.
            check_every: steps between convergence checks (each check is one host sync).
            return_best: return, per sample, the iterate with the lowest residual seen
                (True) rather than the last one.
            divergence_factor: a sample whose absolute residual exceeds this multiple of its
                initial residual counts as diverged.
            coupled: the samples are one problem (g mixes them, e.g. through batch statistics):
                the solver runs on the flattened batch, and one iterate, the one whose worst
                per-sample residual is lowest, is returned for every sample, so that each
                reported residual is the true one at the returned batch.
            **options: overrides of this solver's own options for this call.

        Returns:
            A ``SolverResult``; its residuals are measured at the returned ``z``.

        Raises:
            ValueError: ``z0`` or ``g(z0)`` is not finite, an argument is out of range, or an
                unknown option name.
            ConvergenceError: only with ``throw=True``, when some sample did not converge.
        """
        check_call(z0, max_iter, tol, stop_mode, check_every)
        check_flag("coupled", coupled)
        self.check_call_options(throw=throw, check_every=check_every, return_best=return_best,
                                divergence_factor=divergence_factor)
        solver = self.with_options(**options)
        with torch.no_grad():
            result = _iterate(
                solver, g, z0, max_iter=max_iter, tol=float(tol), stop_mode=stop_mode,
                check_every=check_every, return_best=return_best,
                divergence_factor=divergence_factor, coupled=coupled,
            )
        if throw and not result.success:
            raise ConvergenceError(result)
        return result


#: Devices whose host syncs cost nothing (no queue to drain): there every step, not only every
#: check, reads how many samples improved, to skip the [B, D] best-iterate selection.
SYNC_FREE_DEVICES = ("cpu",)


class _Bookkeeper:
    """Per-sample best iterate, its residuals, and the failure evidence of one solve.

    Kept cheap because it runs at every step: two norm passes over [B, D], about a dozen
    operations on [B]-sized vectors (absolute and relative residuals travel together as one
    [2, B] tensor, so each comparison or selection is one operation), and a [B, D] selection of
    the best iterate only when some samples improved and others did not. Which case it is comes
    with the check's one host sync (on the CPU, where a sync costs nothing, every step asks;
    elsewhere steps between checks always select). Non-finite and divergence evidence is kept as
    running maxima of the residuals (``torch.maximum`` propagates NaN), read only at checks and
    at the end.
    """

    def __init__(self, z0: torch.Tensor, gz0: torch.Tensor, f0: torch.Tensor, *, stop_mode: str,
                 tol: float, return_best: bool, divergence_factor: float, samples: int, coupled: bool = False):
        self.pick = 1 if stop_mode == "rel" else 0  # the row of [abs; rel] compared with tol
        self.tol = tol
        self.return_best = return_best
        self.samples = samples  # residuals are per sample even where the solver sees one flat problem
        self.coupled = coupled
        self.sync_every_step = z0.device.type in SYNC_FREE_DEVICES
        finfo = torch.finfo(gz0.dtype)
        residuals = self._norms(f0, gz0)
        self.best_z, self.best2 = z0, residuals
        self.peak2 = residuals.clone()  # updated in place
        self.limit = divergence_factor * residuals[0]
        # The loop's test "residual ≤ bound" rejects NaN, Inf and divergence at once. An infinite
        # (or NaN, from inf · 0) divergence limit becomes the largest finite number, so that only
        # non-finite residuals exceed it; the relative residual only needs to be finite, and only
        # when it is the one compared with tol.
        loop_limit = torch.where(torch.isfinite(self.limit), self.limit, finfo.max)
        rel_bound = torch.full_like(loop_limit, finfo.max if self.pick else float("inf"))
        self.bounds2 = torch.stack([loop_limit, rel_bound])
        self.bests = [residuals[self.pick]]

    @property
    def best(self) -> torch.Tensor:
        """[B] best residuals in the stop mode."""
        return self.best2[self.pick]

    def _norms(self, fz: torch.Tensor, gz: torch.Tensor) -> torch.Tensor:
        """[2, B] per-sample residuals (a coupled batch's flat [1, B·D] iterate viewed as [B, D])."""
        if self.coupled:
            fz, gz = fz.reshape(self.samples, -1), gz.reshape(self.samples, -1)
        return residual_norms(fz, gz)

    def record(self, state: IterState, check: bool) -> bool:
        """Take in a new state; at a check, return whether every sample is done (one host sync)."""
        z, gz = state.z, state.gz
        fz = getattr(state, "fz", None)
        residuals = self._norms(gz - z if fz is None else fz, gz)
        torch.maximum(self.peak2, residuals, out=self.peak2)
        if not self.return_best:
            self.best_z, self.best2 = z, residuals
            self.bests.append(residuals[self.pick])
            return check and not bool(self._active().any())
        # NaN compares False, so a NaN iterate is never kept.
        if self.coupled:
            # One iterate for the whole batch: samples of different iterations would not be a
            # solution of the coupled problem, nor have the residuals measured for them.
            better = (residuals[self.pick].amax() < self.best2[self.pick].amax()).expand(self.samples)
        else:
            better = residuals[self.pick] < self.best2[self.pick]
        self.best2 = torch.where(better, residuals, self.best2)
        self.bests.append(self.best2[self.pick])
        if check:
            n_active, n_better = torch.stack([self._active(), better]).sum(dim=1).tolist()
        elif self.sync_every_step:
            n_active, n_better = -1, int(better.sum())
        else:
            self.best_z = torch.where(better[:z.shape[0], None], z, self.best_z)
            return False
        if n_better == better.numel():
            self.best_z = z
        elif n_better:
            self.best_z = torch.where(better[:, None], z, self.best_z)
        return n_active == 0

    def measure(self, gz: torch.Tensor) -> torch.Tensor:
        """[2, B] residuals of the best iterate from its measured image ``gz``."""
        return self._norms(gz - self.best_z, gz)

    def _active(self) -> torch.Tensor:
        """[B] samples neither converged, nor with a non-finite residual, nor diverged."""
        return (self.best2[self.pick] > self.tol) & (self.peak2 <= self.bounds2).all(dim=0)

    def all_done(self) -> bool:
        """Whether every sample is done, from what has been recorded (one host sync)."""
        return not bool(self._active().any())

    def flags(self) -> tuple[torch.Tensor, torch.Tensor]:
        """[B] ever non-finite (in the stop mode's residual), [B] ever diverged."""
        return ~torch.isfinite(self.peak2[self.pick]), self.peak2[0] > self.limit


def _iterate(
    solver: FixedPointSolver, g_user: Map, z0: torch.Tensor, *, max_iter: int, tol: float,
    stop_mode: str, check_every: int, return_best: bool, divergence_factor: float, coupled: bool = False,
) -> SolverResult:
    shape = z0.shape
    g = BatchedMap(g_user, shape, coupled=coupled)
    z0f = z0.detach().reshape(1 if coupled else shape[0], -1)
    gz0 = first_evaluation(g, z0f)
    state = solver.init(g, z0f, gz0)
    # Most solvers start at z0 itself; then the initial state adds nothing to record.
    at_z0 = state.z is z0f and state.gz is gz0
    f0 = getattr(state, "fz", None) if at_z0 else None
    books = _Bookkeeper(
        z0f, gz0, gz0 - z0f if f0 is None else f0, stop_mode=stop_mode, tol=tol,
        return_best=return_best, divergence_factor=divergence_factor, samples=shape[0], coupled=coupled,
    )
    if at_z0:
        done = books.all_done()
    else:
        books.bests.pop()  # the trace starts after init, as every later entry follows a step
        done = books.record(state, check=True)
    n_steps = 0
    # Checks come right after the step they judge, so the check's sync also tells the
    # bookkeeping whether the best iterate needs a [B, D] selection; the last step is always
    # checked (the final status syncs anyway).
    while not done and n_steps < max_iter:
        state = solver.step(g, state)
        n_steps += 1
        done = books.record(state, check=n_steps % check_every == 0 or n_steps == max_iter)

    solver.finish(state)

    nonfinite, diverged = books.flags()
    extrapolated_met = None
    if solver.EXTRAPOLATES_IMAGE and not is_declared_affine(g_user) and n_steps > 0:
        # The residuals so far may be extrapolations, exact only for affine maps: measure the one
        # reported, at the returned point (one evaluation), and judge the solve by it alone.
        extrapolated_met = books.best <= tol
        books.best2 = books.measure(g(books.best_z))
        books.bests[-1] = books.best2[books.pick]
        nonfinite = nonfinite | ~torch.isfinite(books.best)
    converged = books.best <= tol
    return SolverResult(
        z=books.best_z.reshape(shape).to(z0.dtype),
        n_evals=g.n_evals,
        n_steps=n_steps,
        abs_residual=books.best2[0],
        rel_residual=books.best2[1],
        converged=converged,
        trace=torch.stack(books.bests).amax(dim=1),
        status=final_status(converged, nonfinite, diverged, extrapolated_met),
        stop_mode=stop_mode,
        tol=tol,
    )
