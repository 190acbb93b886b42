"""The one loop that runs every iterative solver: counting, stopping, best-so-far, statuses.

A solver only says how to start (``init``) and how to take one step (``step``); everything
a user relies on to trust a result (evaluation counts, per-sample residuals at the returned
iterate, convergence flags, divergence and NaN detection) lives here, once.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import Any, Callable, ClassVar, Mapping, Optional

import torch

from ._result import ConvergenceError, SolverResult, SolverStatus

Map = Callable[[torch.Tensor], torch.Tensor]
STOP_MODES = ("abs", "rel")


class AffineMap:
    """An affine map g(z) = A z + c given as its parts: the linear operator A and the offset c.

    Linear solvers use A itself (GMRES's Arnoldi products, ``exact``'s columns, the Neumann
    series' terms, SPIDE's spike inputs), never a difference of two evaluations of g; the
    others see only g. The backward hands its adjoint system to solvers this way, A being
    v ↦ J_fᵀ v (the network's explicit operator, or autograd's VJP) and c = ∂L/∂a. Since g is
    affine by construction, GMRES may take the image its recurrence forms at the returned
    point as measured.

    Args:
        linear: ``v ↦ A v`` on tensors shaped like z (one call counts as one evaluation).
        offset: c, shaped like z.
        apply: optionally ``z ↦ A z + c`` in one fused call (e.g. a product-and-add); by default
            ``linear(z) + offset``.
    """

    affine = True

    def __init__(self, linear: Map, offset: torch.Tensor, *, apply: Optional[Map] = None):
        if not callable(linear):
            raise TypeError(f"AffineMap needs a callable linear operator, got {type(linear).__name__}")
        if not isinstance(offset, torch.Tensor):
            raise TypeError(f"AffineMap's offset must be a tensor, got {type(offset).__name__}")
        if apply is not None and not callable(apply):
            raise TypeError(f"AffineMap's apply must be callable, got {type(apply).__name__}")
        self.linear, self.offset, self._apply = linear, offset, apply

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return self._apply(z) if self._apply is not None else self.linear(z) + self.offset

    def __repr__(self) -> str:
        return f"AffineMap(linear={self.linear!r}, offset shaped {tuple(self.offset.shape)})"


def is_declared_affine(g: Any) -> bool:
    """Whether ``g`` was declared affine (an ``AffineMap``, or any callable with ``affine = True``)."""
    return getattr(g, "affine", False) is True


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


class BatchedMap:
    """Wraps a user map ``g: [B, ...] -> [B, ...]`` as ``[B, D] -> [B, D]`` (``[1, B·D]`` for a
    coupled batch) and counts its calls. For an ``AffineMap`` it also offers its linear part
    (``linear``, counted alike: one product is one evaluation) and its offset, same layout."""

    def __init__(self, g: Map, shape: torch.Size, *, coupled: bool = False):
        self._g = g
        self._shape = shape
        # [B, D] problems of independent samples need no reshaping (the common case).
        self._flat = len(shape) == 2 and not coupled
        self.n_evals = 0
        self.is_affine = is_declared_affine(g)
        self._linear = getattr(g, "linear", None) if self.is_affine else None
        offset = getattr(g, "offset", None) if self._linear is not None else None
        if offset is not None and tuple(offset.shape) != tuple(shape):
            raise ValueError(f"the affine map's offset is shaped {tuple(offset.shape)}, its input {tuple(shape)}")
        self._offset = offset

    @property
    def has_linear(self) -> bool:
        """Whether the map's linear part A is available (an ``AffineMap``)."""
        return self._linear is not None

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return self._counted(self._g, z)

    def linear(self, v: torch.Tensor) -> torch.Tensor:
        """A v for the flat layout (only where ``has_linear``)."""
        return self._counted(self._linear, v)

    def offset(self, like: torch.Tensor) -> torch.Tensor:
        """c in the flat layout of ``like`` (only where ``has_linear``)."""
        return self._offset.reshape(like.shape).to(like.dtype)

    def _counted(self, fn: Map, z: torch.Tensor) -> torch.Tensor:
        out = fn(z if self._flat else z.view(self._shape))
        self.n_evals += 1
        if not isinstance(out, torch.Tensor) or out.shape != self._shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                f"the map must return a tensor shaped like its input {tuple(self._shape)}, got {got}"
            )
        return out if self._flat else out.reshape(z.shape)


def residual_norms(fz: torch.Tensor, gz: torch.Tensor) -> torch.Tensor:
    """[2, B]: per sample ``‖fz‖`` and that over ``‖g(z)‖``, for ``fz = g(z) − z`` and ``gz`` [B, D]."""
    out = fz.new_empty(2, fz.shape[0])
    torch.linalg.vector_norm(fz, dim=1, out=out[0])
    torch.div(out[0], torch.linalg.vector_norm(gz, dim=1).clamp_min_(torch.finfo(gz.dtype).tiny), out=out[1])
    return out


def residuals(z: torch.Tensor, gz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample ``‖g(z) − z‖`` and that over ``‖g(z)‖`` for [B, D] tensors."""
    abs_res, rel_res = residual_norms(gz - z, gz)
    return abs_res, rel_res


#: The driver's call options besides the settings ``max_iter``, ``tol``, ``stop_mode``: every
#: solver honours each of them or refuses it with a one-line ``ValueError``. An options dict of
#: an entry point (``implicit_grad``, ``ImplicitAdjoint``, ``b_options``, ``f_options``) may mix
#: them with the solver's own options; ``configure`` splits them by name.
CALL_OPTIONS = ("throw", "check_every", "return_best", "divergence_factor")


def check_settings(max_iter: Any, tol: Any, stop_mode: Any, check_every: Any = 1, *, prefix: str = "") -> None:
    """Reject bad solve settings with a one-line message naming what is allowed.

    ``prefix`` is put before the names in the messages (``"b_"``: ``b_max_iter``, ``b_tol``, ...).
    """
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 0:
        raise ValueError(f"`{prefix}max_iter` must be an int >= 0, got {max_iter!r}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol > 0 or not math.isfinite(tol):
        raise ValueError(f"`{prefix}tol` must be a finite number > 0, got {tol!r}")
    if stop_mode not in STOP_MODES:
        raise ValueError(f"`{prefix}stop_mode` must be one of {STOP_MODES}, got {stop_mode!r}")
    if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
        raise ValueError(f"`check_every` must be an int >= 1, got {check_every!r}")


def check_call_options(owner: str, *, throw: Any = False, check_every: Any = 1, return_best: Any = True,
                       divergence_factor: Any = 1e6) -> None:
    """Reject a bad value of a call option with a one-line ``ValueError`` naming it and ``owner``."""
    for name, value in (("throw", throw), ("return_best", return_best)):
        if not isinstance(value, bool):
            raise ValueError(f"{owner}: `{name}` must be True or False, got {value!r}")
    if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
        raise ValueError(f"{owner}: `check_every` must be an int >= 1, got {check_every!r}")
    factor = divergence_factor
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor > 0:
        raise ValueError(f"{owner}: `divergence_factor` must be a number > 0 (inf: never), got {factor!r}")


# The arguments every solve takes itself, which an options dict must not carry.
SOLVE_SETTINGS = ("max_iter", "tol", "stop_mode", "coupled")


def unknown_options(owner: str, unknown: list[str], own: list[str], calls: tuple[str, ...]) -> ValueError:
    """The one-line error for option names a solver does not know, listing exactly those it accepts
    (and saying where a solve's own settings go, if one of them was passed as an option)."""
    settings = [name for name in unknown if name in SOLVE_SETTINGS]
    where = (f"; {', '.join(f'`{n}`' for n in settings)} {'is' if len(settings) == 1 else 'are'} not an option but "
             "a setting of the solve itself (`b_max_iter`, `b_tol`, `b_stop_mode` for the backward; `f_max_iter`, "
             "`f_tol`, `f_stop_mode` for the analytic forward)") if settings else ""
    return ValueError(
        f"{owner} got unknown option(s) {unknown}; it accepts its options {own} "
        f"and the call options {list(calls)}{where}"
    )


def configure(solver: Any, options: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Split one options dict into the solver's own options and the driver's call options.

    Returns the solver with its own options applied and the call options (``CALL_OPTIONS``) to
    pass to every call of it, both validated now: an unknown name is a ``ValueError`` listing
    exactly what this solver accepts, and a call option the solver cannot honour is refused with
    its reason. A solver without ``split_options`` (a user's own callable) gets every option at
    each call, unchecked.
    """
    if not isinstance(options, Mapping):
        raise TypeError(f"solver options must be a dict, got {type(options).__name__}")
    split = getattr(solver, "split_options", None)
    if split is None:
        return solver, dict(options)
    return split(dict(options))


def split_solver_options(solver: Any, options: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """``split_options`` of any solver with ``option_names``, ``owner``, ``ACCEPTED_CALL_OPTIONS``,
    ``check_call_options`` and ``with_options``: unknown names refused, call options checked."""
    own_names = solver.option_names
    unknown = sorted(set(options) - set(own_names) - set(CALL_OPTIONS))
    if unknown:
        raise unknown_options(solver.owner, unknown, own_names, solver.ACCEPTED_CALL_OPTIONS)
    calls = {name: value for name, value in options.items() if name in CALL_OPTIONS}
    solver.check_call_options(**calls)
    return solver.with_options(**{n: v for n, v in options.items() if n in own_names}), calls


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


def check_flag(name: str, value: Any) -> None:
    """Reject a non-bool switch (a string "False" would silently count as true)."""
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be True or False, got {value!r}")


def all_finite(x: torch.Tensor) -> bool:
    """Whether every entry of ``x`` is finite (one host sync)."""
    # A sum is one cheap pass and is finite whenever every entry is, unless finite entries
    # overflow it; only then is the exact, several-times-slower elementwise test needed.
    return bool(torch.isfinite(x.sum())) or bool(torch.isfinite(x).all())


def first_evaluation(g: BatchedMap, z0: torch.Tensor) -> torch.Tensor:
    """Evaluate ``g(z0)`` once, refusing non-finite input or output with a clear error."""
    if not all_finite(z0):
        raise ValueError("`z0` contains NaN or Inf; a fixed-point solve needs a finite initial guess")
    gz0 = g(z0)
    if not all_finite(gz0):
        raise ValueError("the map returned NaN or Inf at the initial guess `z0`; check its inputs")
    return gz0


def final_status(converged: torch.Tensor, nonfinite: torch.Tensor, diverged: torch.Tensor,
                 extrapolated_met: Optional[torch.Tensor] = None) -> SolverStatus:
    """The status of a solve from per-sample flags (one host sync); ``extrapolated_met``: [B]
    samples whose extrapolated residual met ``tol`` (solvers that assume an affine map)."""
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
    return SolverStatus.MAX_ITER


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
