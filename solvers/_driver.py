"""The one loop that runs every iterative solver: counting, stopping, best-so-far, statuses.

A solver only says how to start (``init``) and how to take one step (``step``); everything
a user relies on to trust a result (evaluation counts, per-sample residuals at the returned
iterate, convergence flags, divergence and NaN detection) lives here, once.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import Any, Callable

import torch

from ._result import ConvergenceError, SolverResult, SolverStatus

Map = Callable[[torch.Tensor], torch.Tensor]
STOP_MODES = ("abs", "rel")


@dataclasses.dataclass
class IterState:
    """The part of a solver's state the driver reads: the iterate ``z`` and ``gz = g(z)``, both [B, D]."""

    z: torch.Tensor
    gz: torch.Tensor


class BatchedMap:
    """Wraps a user map ``g: [B, ...] -> [B, ...]`` as ``[B, D] -> [B, D]`` and counts its calls."""

    def __init__(self, g: Map, shape: torch.Size):
        self._g = g
        self._shape = shape
        self.n_evals = 0

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        out = self._g(z.view(self._shape))
        self.n_evals += 1
        if not isinstance(out, torch.Tensor) or out.shape != self._shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                f"the map must return a tensor shaped like its input {tuple(self._shape)}, got {got}"
            )
        return out.reshape(z.shape)


def residuals(z: torch.Tensor, gz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample ``‖g(z) − z‖`` and that over ``‖g(z)‖`` for [B, D] tensors."""
    abs_res = torch.linalg.vector_norm(gz - z, dim=1)
    scale = torch.linalg.vector_norm(gz, dim=1).clamp_min(torch.finfo(gz.dtype).tiny)
    return abs_res, abs_res / scale


def check_settings(max_iter: Any, tol: Any, stop_mode: Any, check_every: Any = 1) -> None:
    """Reject bad solve settings with a one-line message naming what is allowed."""
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 0:
        raise ValueError(f"`max_iter` must be an int >= 0, got {max_iter!r}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol > 0 or not math.isfinite(tol):
        raise ValueError(f"`tol` must be a finite number > 0, got {tol!r}")
    if stop_mode not in STOP_MODES:
        raise ValueError(f"`stop_mode` must be one of {STOP_MODES}, got {stop_mode!r}")
    if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
        raise ValueError(f"`check_every` must be an int >= 1, got {check_every!r}")


def check_call(z0: Any, max_iter: Any, tol: Any, stop_mode: Any, check_every: Any) -> None:
    """Reject a bad initial guess or bad settings before any work is done."""
    if not isinstance(z0, torch.Tensor):
        raise TypeError(f"`z0` must be a torch.Tensor, got {type(z0).__name__}")
    if z0.dim() < 2:
        raise ValueError(
            f"`z0` must be batched with shape [B, ...] (at least 2 dims), got shape {tuple(z0.shape)}; "
            "for a single problem use `z0[None]`"
        )
    if not z0.is_floating_point():
        raise TypeError(f"`z0` must be a floating-point tensor, got dtype {z0.dtype}")
    check_settings(max_iter, tol, stop_mode, check_every)


def first_evaluation(g: BatchedMap, z0: torch.Tensor) -> torch.Tensor:
    """Evaluate ``g(z0)`` once, refusing non-finite input or output with a clear error."""
    if not bool(torch.isfinite(z0).all()):
        raise ValueError("`z0` contains NaN or Inf; a fixed-point solve needs a finite initial guess")
    gz0 = g(z0)
    if not bool(torch.isfinite(gz0).all()):
        raise ValueError("the map returned NaN or Inf at the initial guess `z0`; check its inputs")
    return gz0


def final_status(converged: torch.Tensor, nonfinite: torch.Tensor, diverged: torch.Tensor) -> SolverStatus:
    """The status of a solve from per-sample flags (one host sync)."""
    failed = ~converged
    flags = torch.stack([failed.any(), (nonfinite & failed).any(), (diverged & failed).any()]).tolist()
    if not flags[0]:
        return SolverStatus.SUCCESS
    if flags[1]:
        return SolverStatus.NONFINITE
    if flags[2]:
        return SolverStatus.DIVERGED
    return SolverStatus.MAX_ITER


class FixedPointSolver(abc.ABC):
    """Base of the registry's solvers: configuration in fields, ``init``/``step``, one shared driver.

    Subclasses are frozen dataclasses whose fields are their options, validated in
    ``__post_init__``. An instance is called as
    ``solver(g, z0, *, max_iter, tol, stop_mode="rel", **options) -> SolverResult``, where
    ``options`` override the fields for that call (unknown names raise ``TypeError``).
    """

    @abc.abstractmethod
    def init(self, g: BatchedMap, z0: torch.Tensor, gz0: torch.Tensor) -> IterState:
        """The starting state from the initial guess and its image, both [B, D]."""

    @abc.abstractmethod
    def step(self, g: BatchedMap, state: IterState) -> IterState:
        """One iteration; returns a new state whose ``gz`` is ``g(z)``."""

    def with_options(self, **options: Any) -> "FixedPointSolver":
        """A copy with some options changed; unknown option names raise ``TypeError``."""
        names = [f.name for f in dataclasses.fields(self)]  # type: ignore[arg-type]
        unknown = sorted(set(options) - set(names))
        if unknown:
            raise TypeError(
                f"{type(self).__name__} got unknown option(s) {unknown}; its options are {names} "
                "plus the call arguments max_iter, tol, stop_mode, throw, check_every, "
                "return_best, divergence_factor"
            )
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
            **options: overrides of this solver's own options for this call.

        Returns:
            A ``SolverResult``; its residuals are measured at the returned ``z``.

        Raises:
            ValueError: ``z0`` or ``g(z0)`` is not finite, or an argument is out of range.
            TypeError: an unknown option name.
            ConvergenceError: only with ``throw=True``, when some sample did not converge.
        """
        check_call(z0, max_iter, tol, stop_mode, check_every)
        solver = self.with_options(**options)
        with torch.no_grad():
            result = _iterate(
                solver, g, z0, max_iter=max_iter, tol=float(tol), stop_mode=stop_mode,
                check_every=check_every, return_best=return_best,
                divergence_factor=divergence_factor,
            )
        if throw and not result.success:
            raise ConvergenceError(result)
        return result


def _iterate(
    solver: FixedPointSolver, g_user: Map, z0: torch.Tensor, *, max_iter: int, tol: float,
    stop_mode: str, check_every: int, return_best: bool, divergence_factor: float,
) -> SolverResult:
    shape = z0.shape
    g = BatchedMap(g_user, shape)
    z0f = z0.detach().reshape(shape[0], -1)
    gz0 = first_evaluation(g, z0f)

    pick = 0 if stop_mode == "abs" else 1
    best_abs, best_rel = residuals(z0f, gz0)
    best_z, best = z0f, (best_abs, best_rel)[pick]
    initial_abs = best_abs
    nonfinite = torch.zeros_like(best_abs, dtype=torch.bool)
    diverged = torch.zeros_like(nonfinite)

    def record(state: IterState) -> None:
        nonlocal best_z, best_abs, best_rel, best
        abs_res, rel_res = residuals(state.z, state.gz)
        current = (abs_res, rel_res)[pick]
        nonfinite.logical_or_(~torch.isfinite(current))
        diverged.logical_or_(abs_res > divergence_factor * initial_abs)
        if return_best:
            # NaN compares False, so a NaN iterate is never kept.
            better = current < best
            best_z = torch.where(better[:, None], state.z, best_z)
            best_abs = torch.where(better, abs_res, best_abs)
            best_rel = torch.where(better, rel_res, best_rel)
        else:
            best_z, best_abs, best_rel = state.z, abs_res, rel_res
        best = (best_abs, best_rel)[pick]

    state = solver.init(g, z0f, gz0)
    record(state)
    trace = [best.max()]
    n_steps = 0
    while n_steps < max_iter:
        if n_steps % check_every == 0 and bool(((best <= tol) | nonfinite | diverged).all()):
            break
        state = solver.step(g, state)
        n_steps += 1
        record(state)
        trace.append(best.max())

    converged = best <= tol
    return SolverResult(
        z=best_z.reshape(shape).to(z0.dtype),
        n_evals=g.n_evals,
        n_steps=n_steps,
        abs_residual=best_abs,
        rel_residual=best_rel,
        converged=converged,
        trace=torch.stack(trace),
        status=final_status(converged, nonfinite, diverged),
        stop_mode=stop_mode,
        tol=tol,
    )
