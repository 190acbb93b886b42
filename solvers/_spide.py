"""Spike-based solve of an affine fixed-point problem: SPIDE's backward, as a registry solver.

SPIDE (Xiao et al., "SPIDE: A Purely Spike-based Method for Training Feedback Spiking Neural
Networks", Neural Networks 2023; github.com/pkuxmq/SPIDE-FSNN, ``snn_backward`` in
``modules/snn_modules.py``) solves the IDE adjoint v = J_fᵀ v + ∂L/∂a with integrate-and-fire
neurons that emit ternary spikes, so that the backward pass, too, is spike events on
neuromorphic hardware. Here the same dynamics run on any affine black box g(z) = A z + c.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, ClassVar, Optional, Union

import torch

from ._checks import check_range
from ._driver import final_status
from ._maps import BatchedMap, all_finite, first_evaluation, residual_norms
from ._options import CALL_OPTIONS, check_call, check_call_options, check_flag, unknown_options
from ._result import ConvergenceError, SolverResult

Map = Callable[[torch.Tensor], torch.Tensor]
OWNER = "spide"


def _check_positive(name: str, value: Any, *, auto: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite number > 0 (or ``"auto"`` where allowed)."""
    if auto and isinstance(value, str) and value == "auto":
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if not ok:
        allowed = '"auto" or a finite number > 0' if auto else "a finite number > 0"
        raise ValueError(f"{OWNER}: `{name}` must be {allowed}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class SPIDE:
    """SPIDE's spiking solve of z = A z + c: the rate of ternary spikes, times θ, estimates z.

    Each of the T = ``max_iter`` steps (``b_max_iter`` in a backward) feeds the last step's
    spikes through g, the input g(θ s) = A θ s + c (which on hardware is spike events through
    the synapses; the first step has no spikes yet and gets g(0) = c), integrates it into the
    membrane potential u, fires s = +1 where u ≥ λθ and −1 where u ≤ −λθ (λ = ``firing_level``),
    and resets by subtracting θ s. The estimate is z = Σₜ θ sₜ / T. Summing the updates gives,
    for affine g, g(z) − z = (u_T + A θ s_T) / T, whatever θ did during the run: while every
    |zᵢ*| < θ the error is O(θ/T), halving when T doubles, not geometric. A neuron fires at most
    once per step, so a fixed θ cannot represent |zᵢ*| > θ: such a neuron saturates, its
    potential grows without bound, and the measured residual stays large (reported, never a
    silent wrong answer).

    The automatic threshold (``threshold="auto"``, the default) is set per sample, coupled batch
    or not, so that a sample whose right-hand side is small still spikes, and it follows the
    solution's scale, not only the right-hand side's: it starts at ``headroom`` ·
    max(‖z0‖_∞, ‖c‖_∞), and a sample's θ doubles whenever one of its neurons' potentials runs
    past 2θ (more input than a spike a step can carry). Through batch norm's coupling the adjoint
    of a trained conv network reaches tens of times its right-hand side's scale, where a θ taken
    from c saturates.

    ``rounds`` > 1 splits T into rounds that each solve for the residual the rounds before
    left, g(z) − z = (u_T + A θ s_T) / T: the neurons' own potentials plus one more step of
    spike input, so the solve stays spike-driven. Each round's θ is its right-hand side's scale
    times the gain from right-hand side to solution the round before measured. The error then
    falls like (C/T)^rounds instead of C/T. ``rounds=1`` is SPIDE's single simulation.

    The solve is a fixed-length simulation, not a driver loop: T evaluations on spike inputs
    (all but the first ternary, the first zero; with rounds, one of them the step that reads a
    round's residual) plus one at the returned estimate to measure its residuals honestly,
    T + 1 in all, and no host sync until the end. Given an ``AffineMap`` (the backward's
    adjoint system), the spike inputs go through its linear part A θ s, plus c, and the first
    step's input is c itself: T evaluations in all. ``z0`` is not evaluated (a spike-driven
    solve starts from no spikes); it only sets the automatic threshold's starting scale. The
    result's ``trace`` holds, after each step, the worst residual of the running estimate;
    between its first entry (at z = 0) and its last (measured at the returned z) it is computed
    by linearity, exact only for affine maps.

    T is the one budget: the simulation runs exactly the call's ``max_iter`` steps (SPIDE's
    ``time_step_back``, 250 in its CIFAR code, 100 for MNIST); ``tol`` never stops it early, it
    only judges the result.

    Args:
        threshold: θ, the value one spike carries (SPIDE's V_th^b − u_rest^b). A number: fixed,
            one for the batch, as in SPIDE, which fixes V_th^b = 0.5 with u_rest^b = −V_th^b
            (θ = 1) and multiplies the loss by 100 (MNIST) or 400 (CIFAR), a hand-tuned θ = 1/400
            in gradient units. ``"auto"``: per sample and growing, as above.
        headroom: ``"auto"``'s starting margin: the rate represents |zᵢ| up to θ, and the solution
            of a contraction is larger than c by up to 1/(1 − ‖A‖); a larger margin saturates
            less at the start, at the price of error proportional to θ.
        firing_level: λ in [0.5, 1]: neurons fire at |u| ≥ λθ. 0.5 is SPIDE's modified reset
            (fire at V_th^b, subtract V_th^b − u_rest^b = 2 V_th^b), which keeps |u| ≤ θ/2, half
            the error of the plain integrate-and-fire neuron (λ = 1, |u| < θ).
        rounds: how many rounds T is split into (the longest first); > 1 needs ``"auto"``.
    """

    threshold: Union[float, str] = "auto"
    headroom: float = 2.0
    firing_level: float = 0.5
    rounds: int = 1

    def __post_init__(self) -> None:
        _check_positive("threshold", self.threshold, auto=True)
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 1:
            raise ValueError(f"{OWNER}: `rounds` must be an int >= 1, got {self.rounds!r}")
        if self.rounds > 1 and self.threshold != "auto":
            raise ValueError(f"{OWNER}: `rounds` > 1 needs threshold=\"auto\" (each round sets its own θ from the "
                             f"residual left), got threshold={self.threshold!r}")
        _check_positive("headroom", self.headroom)
        check_range(OWNER, "firing_level", self.firing_level, 0.5, 1.0, low_open=False)

    @property
    def description(self) -> str:
        """One line for listings."""
        return ("SPIDE: spike-based solve of an affine problem, ternary spikes for exactly max_iter steps T, "
                "error O(θ/T) (Xiao et al. 2023)")

    #: Built on linearity: the rate of spikes fed through g estimates z only for affine g.
    SOLVES_NONLINEAR: ClassVar[bool] = False

    #: ``check_every`` is refused (nothing is checked before the end) and so is
    #: ``return_best=True`` (the estimate is the spike rate of the whole run).
    ACCEPTED_CALL_OPTIONS: ClassVar[tuple[str, ...]] = ("throw", "return_best", "divergence_factor")

    @property
    def option_names(self) -> list[str]:
        """The solver's own options (its fields)."""
        return [f.name for f in dataclasses.fields(self)]

    def with_options(self, **options: Any) -> "SPIDE":
        """A copy with some options changed; unknown option names raise ``ValueError``."""
        names = self.option_names
        unknown = sorted(set(options) - set(names))
        if unknown:
            raise unknown_options(OWNER, unknown, names, self.ACCEPTED_CALL_OPTIONS)
        return dataclasses.replace(self, **options) if options else self

    def check_call_options(self, *, throw: Any = False, check_every: Any = None, return_best: Any = False,
                           divergence_factor: Any = 1e6) -> None:
        """Refuse ``check_every`` (whatever its value) and ``return_best=True``; check the others."""
        if check_every is not None:
            raise ValueError(
                f"{OWNER}: `check_every` cannot be honoured: the simulation has no convergence checks, "
                "only its end is measured; leave it out"
            )
        check_call_options(OWNER, throw=throw, return_best=return_best, divergence_factor=divergence_factor)
        if return_best:
            raise ValueError(
                f"{OWNER}: `return_best` must be False: the estimate is the spike rate of the whole run, "
                "there is no best iterate to return"
            )

    def split_options(self, options: dict[str, Any]) -> tuple["SPIDE", dict[str, Any]]:
        """``configure`` for this solver: (a copy with its own options applied, the call options)."""
        names = self.option_names
        unknown = sorted(set(options) - set(names) - set(CALL_OPTIONS))
        if unknown:
            raise unknown_options(OWNER, unknown, names, self.ACCEPTED_CALL_OPTIONS)
        calls = {name: value for name, value in options.items() if name in CALL_OPTIONS}
        self.check_call_options(**calls)
        return self.with_options(**{n: v for n, v in options.items() if n in names}), calls

    def thresholds(self, z0: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """The first round's θ as [B, 1] (``[1, 1]`` for a fixed number) for [B, D] tensors ``z0`` and
        ``c = g(0)``: per sample, coupled or not, so that a sample with a small right-hand side
        still spikes (one θ for a coupled batch leaves such samples spike-free)."""
        if self.threshold != "auto":
            return z0.new_full((1, 1), float(self.threshold))
        scale = torch.maximum(z0.abs().amax(dim=1, keepdim=True), c.abs().amax(dim=1, keepdim=True))
        # A sample with z0 = c = 0 has the solution 0; a tiny θ keeps it spike-free, not NaN.
        return (self.headroom * scale).clamp_min_(torch.finfo(z0.dtype).tiny)

    def _round_lengths(self, steps: int) -> list[int]:
        """The budget T split into ``rounds`` (fewer if T is smaller), the longest first."""
        rounds = min(self.rounds, steps)
        return [steps // rounds + (1 if i < steps % rounds else 0) for i in range(rounds)]

    def _next_thresholds(self, offset: torch.Tensor, estimate: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """θ for the next round, per sample: its right-hand side (the residual left) times the gain
        from right-hand side to solution this round measured, times the headroom. The gain is
        the coupled solution's scale (batch norm can make it tens of times the right-hand side's),
        which a θ taken from the right-hand side alone cannot see."""
        tiny = torch.finfo(offset.dtype).tiny
        gain = estimate.abs().amax(dim=1, keepdim=True) / offset.abs().amax(dim=1, keepdim=True).clamp_min(tiny)
        scale = residual.abs().amax(dim=1, keepdim=True) * gain.clamp_min(1.0)
        return (self.headroom * scale).clamp_min_(tiny)

    def __call__(
        self, g: Map, z0: torch.Tensor, *, max_iter: int, tol: float, stop_mode: str = "rel",
        throw: bool = False, check_every: Optional[int] = None, return_best: bool = False,
        divergence_factor: float = 1e6, coupled: bool = False, **options: Any,
    ) -> SolverResult:
        """Solve ``z = g(z)`` for an affine ``g`` by spikes for exactly ``max_iter`` steps; the
        registry's solver contract.

        ``check_every`` is refused (there are no checks before the end), and so is
        ``return_best=True`` (the estimate is the rate of the whole run). A sample counts as
        diverged when its absolute residual, at any step of the run (the running estimates' by
        linearity, the last one measured), exceeds ``divergence_factor`` times that at the start,
        z = 0 (‖c‖). ``coupled=True`` (g mixes the samples) changes nothing here: the simulation
        is elementwise with a threshold per sample either way, and g always sees the whole batch.

        Returns:
            A ``SolverResult`` whose residuals are measured at the returned ``z`` with one
            evaluation of g (counted in ``n_evals``); ``SUCCESS`` only if they meet ``tol``.
        """
        check_call(z0, max_iter, tol, stop_mode, 1)
        check_flag("coupled", coupled)
        self.check_call_options(throw=throw, check_every=check_every, return_best=return_best,
                                divergence_factor=divergence_factor)
        solver = self.with_options(**options)
        with torch.no_grad():
            result = solver._solve(g, z0, max_iter, float(tol), stop_mode, coupled,
                                   float(divergence_factor))
        if throw and not result.success:
            raise ConvergenceError(result)
        return result

    def _solve(self, g_user: Map, z0: torch.Tensor, steps: int, tol: float, stop_mode: str,
               coupled: bool, divergence_factor: float = 1e6) -> SolverResult:
        shape = z0.shape
        g = BatchedMap(g_user, shape)  # g always gets the whole batch, so a coupled map is fine
        z0f = z0.detach().reshape(shape[0], -1)
        pick = 0 if stop_mode == "abs" else 1
        if steps == 0:  # as every solver: the initial guess, measured
            z, gz, trace = z0f, first_evaluation(g, z0f), z0f.new_empty(0, shape[0])
            start = peak = None
            events = torch.zeros_like(z0f)
        else:
            z, gz, trace, start, peak, events = self._simulate(g, z0f, steps, pick, coupled)
        abs_res, rel_res = residual_norms(gz - z, gz)
        best = (abs_res, rel_res)[pick]
        converged = best <= tol
        if start is None:
            diverged = torch.zeros_like(converged)
        else:
            diverged = torch.maximum(peak, abs_res) > divergence_factor * start
        return SolverResult(
            z=z.reshape(shape).to(z0.dtype), n_evals=g.n_evals, n_steps=steps,
            abs_residual=abs_res, rel_residual=rel_res, converged=converged,
            trace=torch.cat([trace, best[None]]).amax(dim=1),
            status=final_status(converged, ~torch.isfinite(best), diverged, budget=True),
            stop_mode=stop_mode, tol=tol, counters={"spike_events": events.reshape(shape)},
        )

    def _simulate(self, g: BatchedMap, z0: torch.Tensor, steps: int, pick: int,
                  coupled: bool) -> tuple[torch.Tensor, ...]:
        """Run the neurons: the estimate, g at it (measured), [steps, B] residuals of the running
        estimates after 0 … steps − 1 steps (the trace but its last, measured, entry), [B]
        absolute residuals: at the start (z = 0, ‖c‖) and the largest of the running estimates',
        and [B, D] spike events per neuron that g received."""
        if not all_finite(z0):
            raise ValueError("`z0` contains NaN or Inf; a fixed-point solve needs a finite initial guess")
        # The first step's input: no spikes yet, so g(0) = c, which an AffineMap gives without an evaluation.
        c = g.offset(z0) if g.has_linear else g(torch.zeros_like(z0))
        if not all_finite(c):
            raise ValueError("the map returned NaN or Inf at the first spike input (zero); check its inputs")

        def linear(x: torch.Tensor) -> torch.Tensor:  # A x: spike events through the synapses
            return g.linear(x) if g.has_linear else g(x) - c

        def step_input(x: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:  # A x + offset
            if g.has_linear:
                return g.linear(x) + offset
            # A plain map gives A x + c itself: the first round's input is one evaluation, unchanged.
            return g(x) if offset is c else g(x) - c + offset

        tiny = torch.finfo(c.dtype).tiny
        theta = self.thresholds(z0, c)
        z = torch.zeros_like(c)  # the estimate of the rounds before this one
        events = torch.zeros_like(c)  # Σₜ |sₜ| over the spikes fed through g
        positive, negative = torch.empty_like(c), torch.empty_like(c)
        scaled, scales = [], []  # the trace's numerators and denominators, divided once at the end
        counts = []
        offset = c  # this round's right-hand side: c, then the residual the rounds before left
        lengths = self._round_lengths(steps)
        for index, length in enumerate(lengths):
            fire = self.firing_level * theta
            u = torch.zeros_like(c)  # membrane potentials
            total = torch.zeros_like(c)  # Σₜ θₜ sₜ this round
            y = offset
            for t in range(1, length + 1):
                u += y
                if t > 1:
                    # Before firing, u − offset = t'·(g(z + z_t') − z − z_t') for this round's estimate
                    # after t' = t − 1 steps, by linearity (see the class docstring): the trace costs
                    # no evaluation; and t'·g(z + z_t') = t' z + Σ θ s + u − offset.
                    residual = u - offset
                    scaled.append(torch.linalg.vector_norm(residual, dim=1))
                    counts.append(t - 1)
                    if pick:
                        scales.append(torch.linalg.vector_norm(residual.add_(total).add_(z, alpha=t - 1), dim=1))
                if self.threshold == "auto":
                    # A neuron whose potential runs past 2θ receives more than one spike a step can
                    # carry: its sample's θ doubles, so the rate can represent it (θ only grows).
                    over = u.abs().amax(dim=1, keepdim=True) > 2 * theta
                    theta = torch.where(over, 2 * theta, theta)
                    fire = self.firing_level * theta
                # Ternary spikes s = [u ≥ λθ] − [u ≤ −λθ], compared straight into floating-point buffers
                # (bool tensors and their conversion cost 5-10× more on the CPU).
                spikes = torch.sub(torch.ge(u, fire, out=positive), torch.le(u, -fire, out=negative), out=positive)
                x = spikes * theta  # what the synapses carry: a spike's value
                u -= x  # reset by subtraction keeps the surplus for the next step
                total += x
                if t < length or index + 1 < len(lengths):
                    events += spikes.abs()
                if t < length:
                    y = step_input(x, offset)
            estimate = total / length
            if index + 1 < len(lengths):
                # The residual this round leaves, g(z + estimate) − z − estimate = (u + A x_T) / T by
                # linearity: the neurons' own potentials and one more step of spike input.
                previous = offset
                offset = (u + linear(x)) / length
                theta = self._next_thresholds(previous, estimate, offset)
                z = z + estimate
                # The trace's entry for the estimate after this round, exact: its residual is the offset.
                scaled.append(torch.linalg.vector_norm(offset, dim=1))
                counts.append(1)
                if pick:
                    scales.append(torch.linalg.vector_norm(z + offset, dim=1))
            else:
                z = z + estimate
        start = residual_norms(c, c)  # at z = 0, where g(0) − 0 = c
        trace, peak = start[pick, None], start[0]
        if scaled:
            numerators = torch.stack(scaled)
            divisors = torch.tensor(counts, dtype=c.dtype, device=c.device)[:, None]
            absolute = numerators / divisors  # t'·‖g(z_t') − z_t'‖ over t'
            peak = torch.maximum(peak, absolute.amax(dim=0))
            if not pick:
                trace = torch.cat([trace, absolute])
            else:
                trace = torch.cat([trace, numerators / torch.stack(scales).clamp_min_(tiny)])
        return z, g(z), trace, start[0], peak, events
