"""Discrete-time integrate-and-fire neurons (supplement Eq. 20), updated in place.

Dynamics of one layer at step t, with ``current`` the synaptic input of that step:

    u ← u + current;  s = [u ≥ Vth];  u ← u − Vth·s (reset by subtraction);  u ← λ·u (LIF only)

The leak is applied after the reset, as in the reference code, so the current of a step is not
leaked before its threshold test. Everything here is branch-free on tensor values (no ``.item()``,
no data-dependent Python control flow), so that a whole simulation can be captured by CUDA
graphs or ``torch.compile``.
"""

from __future__ import annotations

import torch


def fire_(potential: torch.Tensor, current: torch.Tensor, spikes: torch.Tensor, *, vth: float, leak: float) -> torch.Tensor:
    """Advance one layer by one step in place: integrate, fire into ``spikes``, reset, leak.

    Args:
        potential: membrane potentials u ``[B, ...]``, updated in place.
        current: this step's input current, same shape.
        spikes: output buffer, same shape and dtype; receives 1.0 where u ≥ Vth, else 0.0.
        vth: firing threshold.
        leak: λ in (0, 1]; 1 is the IF neuron.

    Returns:
        ``spikes``.
    """
    potential.add_(current)
    # A comparison written straight into the float buffer: a bool tensor and a copy cost 7x more.
    torch.ge(potential, vth, out=spikes)
    potential.sub_(spikes, alpha=vth)
    if leak != 1.0:
        potential.mul_(leak)
    return spikes


def fire(potential: torch.Tensor | None, current: torch.Tensor, *, vth: float,
         leak: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``fire_`` out of place, for autograd: ``(potential before the threshold test, spikes,
    next potential)``; ``potential`` None is the first step's zero."""
    pre = current if potential is None else potential + current
    # Written straight into a float tensor: a bool tensor and a copy cost several times more.
    spikes = torch.ge(pre, vth, out=torch.empty_like(pre))
    post = torch.sub(pre, spikes, alpha=vth)
    if leak != 1.0:
        post.mul_(leak)
    return pre, spikes, post


def fire_unleaked_(potential: torch.Tensor, current: torch.Tensor, spikes: torch.Tensor, *, vth: float,
                   leak: float) -> torch.Tensor:
    """``fire_`` for a potential held before its leak: u ← λ·u + current, fire, reset by subtraction.

    The same dynamics as ``fire_`` (its leak at the end of a step is this one's at the start of
    the next), in three passes over memory instead of four; ``potential`` holds λ⁻¹ times
    ``fire_``'s between steps. Start from zero potentials, as ``fire_`` does.
    """
    if leak == 1.0:
        potential.add_(current)
    else:
        torch.add(current, potential, alpha=leak, out=potential)
    torch.ge(potential, vth, out=spikes)
    potential.sub_(spikes, alpha=vth)
    return spikes


def rate_weights(time_steps: int, leak: float, *, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """Weights ``[T]`` of the (λ-weighted) average over time: λ^(T−1−t) / Σₖ λᵏ (1/T for IF)."""
    exponents = torch.arange(time_steps - 1, -1, -1, dtype=torch.float64)
    weights = torch.as_tensor(leak, dtype=torch.float64) ** exponents
    return (weights / weights.sum()).to(dtype=dtype, device=device)


def time_average(spike_train: torch.Tensor, leak: float) -> torch.Tensor:
    """The (λ-weighted) average over dim 1 of ``[B, T, ...]``, without modifying the input."""
    weights = rate_weights(spike_train.shape[1], leak, dtype=spike_train.dtype, device=spike_train.device)
    return torch.einsum("bt...,t->b...", spike_train, weights)


def _slope(scaled: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """[0 < scaled < 1] / scale: σ's derivative. Open bounds, as torch.clamp's own backward:
    no gradient at exactly 0 or 1."""
    return ((scaled > 0) & (scaled < 1)).to(scaled.dtype).div_(scale)


class _RateFunction(torch.autograd.Function):
    """σ(x / scale) = clamp(x / scale, 0, 1) whose backward is one multiply by a saved slope.

    The adjoint solve differentiates f once per iteration; autograd's clamp-then-divide backward
    rebuilds the mask from the input every time (comparisons, a select, a zero fill, a divide),
    while here the slope [0 < x/scale < 1] / scale is formed once, in the forward, and also
    returned (without graph) for an explicit Jacobian.
    """

    @staticmethod
    def forward(ctx, current: torch.Tensor, scale):  # type: ignore[override]
        scaled = current / scale
        slope = _slope(scaled, scale)
        ctx.save_for_backward(slope)
        ctx.mark_non_differentiable(slope)
        return scaled.clamp_(0.0, 1.0), slope

    @staticmethod
    def backward(ctx, grad: torch.Tensor, _slope_grad):  # type: ignore[override]
        (slope,) = ctx.saved_tensors
        return grad * slope, None


def rate_and_slope(current: torch.Tensor, vth: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``rate_function(current, vth)`` and its derivative [0 < current/Vth < 1] / Vth (no graph, not to be
    modified in place: the rate's backward uses the same tensor)."""
    if not torch.is_grad_enabled() or not current.requires_grad:
        scaled = current / vth
        return torch.clamp(scaled, 0.0, 1.0), _slope(scaled, vth)
    return _RateFunction.apply(current, vth)


def rate_function(current: torch.Tensor, vth: float | torch.Tensor) -> torch.Tensor:
    """The equilibrium rate σ(current / Vth) = clamp(current / Vth, 0, 1) (supplement Theorem 2).

    Equal to ``torch.clamp(current / vth, 0, 1)`` in value and gradient (zero at the bounds,
    as clamp's), with a backward of one multiply, which the many VJPs of the adjoint solve repeat.
    ``vth`` may be a 0-dim tensor (a buffer): it is never read back to the host. Not
    differentiable with respect to ``vth``.
    """
    if not torch.is_grad_enabled() or not current.requires_grad:
        return torch.clamp(current / vth, 0.0, 1.0)
    return _RateFunction.apply(current, vth)[0]
