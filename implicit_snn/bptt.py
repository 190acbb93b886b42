"""Backpropagation through time (BPTT) with surrogate gradients: the baseline against IDE.

``unroll`` runs the same simulation as the ``if``/``lif`` producers (``simulation``, ``neurons``)
with autograd on: for each layer and step

    u ← u + I;  s = [u ≥ Vth];  u ← u − Vth·s (reset by subtraction);  u ← λ·u (LIF only)

with the feedback W¹ s_N of the previous step into layer 1 (none at the first step), and the
read-out is the last layer's λ-weighted average rate (``neurons.rate_weights``), as in IDE. The
currents come from the network's own hooks (``input_current``, ``forward_current``,
``feedback_current``) and the pass's ``PassState`` from ``map_inputs``, so the masks, the
spectrally normalised feedback weight and the ops are those of the IDE simulation. Gradients
reach the spikes through a surrogate derivative of the Heaviside step (``SURROGATES``), and
flow through the reset unless ``detach_reset=True``, through batch norm, dropout masks, the
feedback's spectral normalisation (α, W, σ(W)) and every weight and bias.

Each neuron layer's step (integrate, fire, reset, leak and, for the read-out layer, the rate
accumulation) is one ``torch.autograd.Function`` that saves one tensor (the potential before
the threshold test): the graph holds per step and layer only that node, the synaptic ops and
their saved inputs. Nothing in the time loop reads a value back to the host.

Batch norm in training (eval mode uses running statistics everywhere, exactly as the IDE
simulation, so a BPTT-trained model evaluates identically under either method):

* input layer, constant input: F¹x + b¹ is computed once, with batch statistics and grad
  (``BNMode.BATCH``, the same call IDE's differentiable evaluation of f makes), and reused at
  every step; its running statistics move once per pass.
* input layer, spike-train input ``[B, T, ...]``: every step's F¹x_t is normalised with the
  batch statistics of F¹x̄ (x̄ the λ-weighted average input), as the IDE simulation does, but
  differentiably; the running statistics move once per pass, from F¹x̄, as in IDE.
* layers 2..N: each step's current is normalised with that step's batch statistics (with
  grad); the running statistics move once per pass, by the mean over the T steps of the
  per-step statistics (biased mean, unbiased variance, as ``nn.BatchNorm``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from . import interrupt
from .neurons import fire, rate_weights
from .simulation import averaged_input, count_statistics, feedback_adder

# -- surrogate derivatives -------------------------------------------------------------------


def _sigmoid_derivative(x: torch.Tensor, slope: float) -> torch.Tensor:
    """d/dx sigmoid(slope·x) = slope·σ(1 − σ), computed in place on one new tensor."""
    sig = torch.mul(x, slope).sigmoid_()
    return sig.addcmul_(sig, sig, value=-1.0).mul_(slope)


def _sigmoid_smooth(x: torch.Tensor, slope: float) -> torch.Tensor:
    return torch.sigmoid(x * slope)


def _rectangular_derivative(x: torch.Tensor, slope: float) -> torch.Tensor:
    """``slope`` on |x| < 1/(2·slope), else 0: a box of width 1/slope and unit area."""
    return (x.abs() < 0.5 / slope).to(x.dtype).mul_(slope)


def _rectangular_smooth(x: torch.Tensor, slope: float) -> torch.Tensor:
    return torch.clamp(x * slope + 0.5, 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class _Kind:
    derivative: Callable[[torch.Tensor, float], torch.Tensor]
    smooth: Callable[[torch.Tensor, float], torch.Tensor]
    default_slope: float
    description: str


#: name → surrogate kind. x = u − Vth; each derivative is that of its ``smooth`` function.
SURROGATES: dict[str, _Kind] = {
    "sigmoid": _Kind(_sigmoid_derivative, _sigmoid_smooth, 4.0,
                     "slope·σ(slope·x)(1 − σ(slope·x)), the derivative of sigmoid(slope·x); peak slope/4"),
    # Width 1/slope = 1 with the default: half a threshold (Vth = 2 in the paper) either side of
    # Vth would be 1, so a neuron within Vth/4 of firing gets the full gradient of 1.
    "rectangular": _Kind(_rectangular_derivative, _rectangular_smooth, 1.0,
                         "slope on |x| < 1/(2·slope), else 0 (width 1/slope, unit area); peak = slope"),
}


def available_surrogates() -> list[str]:
    """The registered surrogate names."""
    return sorted(SURROGATES)


@dataclasses.dataclass(frozen=True)
class Surrogate:
    """A surrogate derivative of the spike nonlinearity s = H(u − Vth).

    Conventions, with x = u − Vth:

    * ``sigmoid``: slope·σ(slope·x)·(1 − σ(slope·x)), the derivative of sigmoid(slope·x);
      peak slope/4 at x = 0; default slope 4 (peak 1).
    * ``rectangular``: ``slope`` on |x| < width/2, 0 elsewhere, with width = 1/slope (unit area,
      like the step it replaces), so ``slope`` is the peak height; the derivative of
      clamp(slope·x + 1/2, 0, 1). Default slope 1 (width 1, i.e. ±Vth/4 for the paper's Vth 2).

    Args:
        name: one of ``available_surrogates()``.
        slope: > 0 and finite; None for the surrogate's default.
    """

    name: str = "sigmoid"
    slope: Optional[float] = None

    def __post_init__(self) -> None:
        if self.name not in SURROGATES:
            raise ValueError(f"unknown surrogate {self.name!r}; choose one of {', '.join(available_surrogates())}")
        if self.slope is None:
            object.__setattr__(self, "slope", SURROGATES[self.name].default_slope)
        slope = self.slope
        if isinstance(slope, bool) or not isinstance(slope, (int, float)) or not math.isfinite(slope) or slope <= 0:
            raise ValueError(f"surrogate slope must be a finite number > 0, got {slope!r}")
        object.__setattr__(self, "slope", float(slope))

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        """The surrogate dH/dx at x = u − Vth (a new tensor)."""
        return SURROGATES[self.name].derivative(x, self.slope)

    def smooth(self, x: torch.Tensor) -> torch.Tensor:
        """The smooth function whose derivative ``derivative`` is (for checks and plots)."""
        return SURROGATES[self.name].smooth(x, self.slope)


def get_surrogate(name: str | Surrogate = "sigmoid", slope: Optional[float] = None) -> Surrogate:
    """A ``Surrogate`` by name (``slope`` None: its default), or the given one unchanged."""
    if isinstance(name, Surrogate):
        if slope is not None and float(slope) != name.slope:
            raise ValueError("give the slope in the Surrogate object, not both")
        return name
    if not isinstance(name, str):
        raise ValueError(f"a surrogate is a name ({', '.join(available_surrogates())}) or a Surrogate, got {name!r}")
    return Surrogate(name, slope)


# -- the fused neuron step -------------------------------------------------------------------


class _NeuronStep(torch.autograd.Function):
    """One layer, one step: integrate, fire, reset, leak (and for the read-out, r ← λ_r·r + s).

    Inputs ``(potential, current, rate, ...)``: the potential after the previous step's reset
    and leak (None at the first step), the step's current, and the read-out's running rate sum
    (None at the first step; ``with_rate`` False for layers that are not read). Outputs the
    spikes, the next potential and, with ``with_rate``, the next rate sum. Forward values are
    computed by the same ops in the same order as ``neurons.fire_`` and the producer's rate
    update, so that they equal the producer's (tests hold them to it).

    Backward, with p the potential before the threshold test and g = surrogate'(p − Vth):
    ∂L/∂p = (∂L/∂s_total)·g + λ·∂L/∂u'·(1 − Vth·g), the reset term dropped with
    ``detach_reset``; ∂L/∂s_total adds the rate's gradient to the spikes' own. Only p is saved.
    """

    @staticmethod
    def forward(ctx, potential, current, rate, vth: float, leak: float, rate_leak: float, with_rate: bool,
                surrogate: Surrogate, detach_reset: bool):  # type: ignore[override]
        pre, spikes, post = fire(potential, current, vth=vth, leak=leak)
        ctx.save_for_backward(pre)
        ctx.has_potential = potential is not None
        ctx.has_rate = rate is not None
        ctx.settings = (vth, leak, rate_leak, with_rate, surrogate, detach_reset)
        ctx.set_materialize_grads(False)  # the last step's potential and spikes often get no gradient
        if not with_rate:
            return spikes, post
        if rate is None:
            new_rate = spikes.clone()  # λ·0 + s, as the producer's zero-initialised sum
        elif rate_leak != 1.0:
            new_rate = torch.add(spikes, rate, alpha=rate_leak)  # λ·r + s in one pass, as the producer
        else:
            new_rate = rate + spikes
        return spikes, post, new_rate

    @staticmethod
    def backward(ctx, grad_spikes, grad_post, grad_rate=None):  # type: ignore[override]
        (pre,) = ctx.saved_tensors
        vth, leak, rate_leak, with_rate, surrogate, detach_reset = ctx.settings
        total = grad_spikes
        if with_rate and grad_rate is not None:
            total = grad_rate if total is None else total + grad_rate
        grad_pre = None
        if total is not None or grad_post is not None:
            slope = surrogate.derivative(pre - vth)
            leaked = None if grad_post is None else (grad_post * leak if leak != 1.0 else grad_post)
            if leaked is None:
                grad_pre = slope.mul_(total)
            elif detach_reset:  # λ·g_u + g·g_s
                grad_pre = leaked if total is None else torch.addcmul(leaked, slope, total)
            else:  # λ·g_u·(1 − Vth·g) + g·g_s = λ·g_u + g·(g_s − Vth·λ·g_u)
                inner = leaked * (-vth) if total is None else torch.add(total, leaked, alpha=-vth)
                grad_pre = torch.addcmul(leaked, slope, inner)
        grad_rate_in = None
        if ctx.has_rate and grad_rate is not None:
            grad_rate_in = grad_rate * rate_leak if rate_leak != 1.0 else grad_rate
        return (grad_pre if ctx.has_potential else None, grad_pre, grad_rate_in,
                None, None, None, None, None, None)


def neuron_step(potential: Optional[torch.Tensor], current: torch.Tensor, rate: Optional[torch.Tensor], *,
                vth: float, leak: float, rate_leak: float, with_rate: bool, surrogate: Surrogate,
                detach_reset: bool = False) -> tuple[torch.Tensor, ...]:
    """One differentiable step of one layer: ``(spikes, next potential[, next rate sum])`` (see ``_NeuronStep``)."""
    return _NeuronStep.apply(potential, current, rate, vth, leak, rate_leak, with_rate, surrogate, detach_reset)


# -- the unrolled simulation -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Unrolled:
    """What ``unroll`` returns.

    Attributes:
        a: the last layer's λ-weighted average rate ``[B, *layer_shapes[-1]]``, with graph.
        stats: the IF/LIF producers' statistics (``time_steps``, ``firing_rate``,
            ``firing_rate_per_layer``, ``silent_per_layer``, ``saturated_per_layer``), as 0-dim
            tensors without graph.
    """

    a: torch.Tensor
    stats: dict[str, Any]


def _bn_update_running(bn: torch.nn.Module, mean: torch.Tensor, var: torch.Tensor) -> None:
    """Move ``bn``'s running statistics once by (mean, unbiased var), as ``nn.BatchNorm`` does in training."""
    if bn.running_mean is None or not bn.track_running_stats:
        return
    factor = bn.momentum
    if bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if factor is None:  # cumulative average; one host read per pass, after the loop
            factor = 1.0 / float(bn.num_batches_tracked)
    if factor is None:
        return
    bn.running_mean.mul_(1.0 - factor).add_(mean, alpha=factor)
    bn.running_var.mul_(1.0 - factor).add_(var, alpha=factor)


def _channel_view(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.view(1, -1, *([1] * (like.dim() - 2)))


def _spike_train_drive(network, x: torch.Tensor, x_bar: torch.Tensor, state, steps: int) -> torch.Tensor:
    """F¹x_t + b¹ for all T steps at once ``[T, B, *layer_shapes[0]]``, in training, with grad.

    Batch norm uses the batch statistics of F¹x̄ with grad; ``F.batch_norm`` cannot take a
    differentiable mean and variance, so the input layer's op and affine parameters are applied
    here directly (the per-channel scale and shift that ``F.batch_norm`` applies).
    """
    layer = network.input_layer
    batch = x.shape[0]
    # Step-major [T·B, ...], so that each step's drive is a contiguous block.
    flat = x[:, :steps].transpose(0, 1).flatten(0, 1)
    z = layer.linear(flat.flatten(1) if network.flatten_input else flat)
    bn = layer.bn
    if bn is not None:
        z_bar = layer.linear(x_bar.flatten(1) if network.flatten_input else x_bar)
        dims = [0] + list(range(2, z_bar.dim()))
        var, mean = torch.var_mean(z_bar, dim=dims, unbiased=False)
        scale = torch.rsqrt(var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight
        shift = -mean * scale
        if bn.bias is not None:
            shift = shift + bn.bias
        z = torch.addcmul(_channel_view(shift, z), z, _channel_view(scale, z))
        with torch.no_grad():  # the running statistics move once, from F¹x̄, as in IDE's f evaluation
            bn(z_bar.detach())
    z = z.view(steps, batch, *z.shape[1:])
    if state.input_mask is not None:
        z = z * state.input_mask
    return z


class _ForwardBN:
    """Per-step batch statistics for a forward layer in training, and their mean over steps."""

    def __init__(self, layer) -> None:
        self.layer = layer
        bn = layer.bn
        tracked = bn.running_mean is not None and bn.track_running_stats
        # F.batch_norm updates these in place with momentum 1/(t+1): after T steps they hold the
        # mean over steps of each step's batch mean and unbiased variance, with no extra pass.
        self.mean = torch.zeros_like(bn.running_mean) if tracked else None
        self.var = torch.zeros_like(bn.running_var) if tracked else None
        self.steps = 0

    def __call__(self, spikes: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        bn = self.layer.bn
        self.steps += 1
        z = F.batch_norm(self.layer.linear(spikes), self.mean, self.var, bn.weight, bn.bias, training=True,
                         momentum=1.0 / self.steps, eps=bn.eps)
        return z if mask is None else z * mask

    def commit(self) -> None:
        if self.mean is not None:
            with torch.no_grad():
                _bn_update_running(self.layer.bn, self.mean, self.var)


def unroll(network, x: torch.Tensor, *, time_steps: int, leak: float = 1.0, surrogate: str | Surrogate = "sigmoid",
           slope: Optional[float] = None, detach_reset: bool = False,
           autocast: Optional[torch.dtype] = None) -> Unrolled:
    """Simulate ``network`` (a ``FeedbackSNN``) for ``time_steps`` with autograd through the spikes.

    The same simulation as ``IFProducer`` (``leak`` 1) / ``LIFProducer`` (``leak`` λ): same
    dynamics, masks, feedback weight, read-out rate and statistics; see the module docstring for
    batch norm. ``detach_reset=False`` (default) differentiates the reset u ← u − Vth·s through s
    too (exact BPTT of the surrogate model); True treats the reset as a constant, a common
    variant that often trains more stably.

    Args:
        network: a ``FeedbackSNN``.
        x: ``[B, *in_shape]`` (constant input) or ``[B, T', *in_shape]`` spike trains, T' ≥ T.
        time_steps: T.
        leak: λ in (0, 1]; 1 is IF.
        surrogate, slope: the surrogate derivative (see ``Surrogate``).
        detach_reset: no gradient through the reset.
        autocast: run the time loop under ``torch.autocast`` with this dtype (e.g. bfloat16), or not.
    """
    if isinstance(time_steps, bool) or not isinstance(time_steps, int) or time_steps < 1:
        raise ValueError(f"`time_steps` must be an int >= 1, got {time_steps!r}")
    if not (isinstance(leak, (int, float)) and 0.0 < leak <= 1.0):
        raise ValueError(f"`leak` must be in (0, 1], got {leak!r}")
    surrogate = get_surrogate(surrogate, slope)
    steps, leak = time_steps, float(leak)
    vth = float(network.vth)  # one host sync per pass, outside the time loop
    spikes_in, x_bar = averaged_input(network, x, steps, leak)
    with torch.no_grad():  # masks, power-iteration step: exactly the producer's draws
        _, state = network.map_inputs(x_bar)
    # The feedback weight (and, for f, batch statistics) with graph, as IDE's differentiable evaluation.
    _, state = network.differentiable_args(x_bar, state)
    training = network.training

    # With ``autocast``, the products (and the activations autograd saves for them) run in that
    # dtype: the standard mixed precision; potentials, resets and rates stay float32.
    with torch.autocast(x.device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        # The drive into layer 1 without feedback: once for constant input, all steps at once for spikes.
        constant = drives = None
        if not spikes_in:
            # The hook f's differentiable evaluation uses: BNMode.BATCH in training (statistics with
            # grad, running statistics moved once), running statistics in eval.
            constant = network.input_drive(x_bar, state)
        elif training and network.input_layer.bn is not None:
            drives = _spike_train_drive(network, x, x_bar, state, steps).unbind(0)  # one backward node for all steps
        # Forward layers: per-step batch statistics in training; the network's hook otherwise.
        forward_bn = [(_ForwardBN(layer) if training and layer.bn is not None else None)
                      for layer in network.forward_layers]
        eval_state = dataclasses.replace(state, batch_statistics=False)  # hooks never update running stats per step
        # drive + W¹s ⊙ m as one product-and-add where the network offers it, as the producer does.
        fused = feedback_adder(network)

        n_layers = len(network.layer_shapes)
        readout = n_layers - 1
        potentials: list[Optional[torch.Tensor]] = [None] * n_layers
        spikes: list[Optional[torch.Tensor]] = [None] * n_layers
        counts: list[Optional[torch.Tensor]] = [None] * n_layers
        rate: Optional[torch.Tensor] = None
        for t in range(steps):
            interrupt.check()  # a stop request ends a long unroll within one step (in training only)
            if constant is not None:
                drive = constant
            elif drives is not None:
                drive = drives[t]
            else:
                drive = network.input_current(x[:, t], eval_state)
            current = drive if t == 0 else fused(drive, spikes[readout], state)
            for index in range(n_layers):
                if index > 0:
                    norm = forward_bn[index - 1]
                    if norm is not None:
                        current = norm(spikes[index - 1], state.forward_masks[index - 1])
                    else:
                        current = network.forward_current(index - 1, spikes[index - 1], eval_state)
                with_rate = index == readout
                out = neuron_step(potentials[index], current, rate if with_rate else None, vth=vth, leak=leak,
                                  rate_leak=leak, with_rate=with_rate, surrogate=surrogate, detach_reset=detach_reset)
                spikes[index], potentials[index] = out[0], out[1]
                if with_rate:
                    rate = out[2]
                # Spike counts for the statistics only; ``detach`` keeps them off the graph.
                # At least float32: under autocast the first step's spikes may be bfloat16, exact only to 256.
                counts[index] = (spikes[index].detach().to(torch.promote_types(spikes[index].dtype, torch.float32),
                                                           copy=True) if t == 0
                                 else counts[index].add_(spikes[index].detach()))
    for norm in forward_bn:
        if norm is not None:
            norm.commit()

    normaliser = rate_weights(steps, leak, dtype=torch.float64)[-1].item()  # = 1 / Σ λᵏ, as the producer
    a = rate.float() * normaliser if autocast is not None else rate * normaliser
    activity = count_statistics(counts, steps)  # before IF's counts are normalised in place below
    if leak != 1.0:
        firing = [c / steps for c in counts]
    else:  # the IF producer reports its rates, the counts times the same normaliser
        firing = [c.mul_(normaliser) for c in counts]
    stats = {
        "time_steps": steps,
        "firing_rate": torch.stack([f.mean() for f in firing]).mean(),
        "firing_rate_per_layer": [f.mean() for f in firing],
        **activity,
    }
    return Unrolled(a=a, stats=stats)


def spiking_settings(producer: Any) -> tuple[int, float]:
    """``(time_steps, leak)`` of an ``if``/``lif`` producer, the simulation BPTT unrolls.

    Any other producer (``analytic``, a custom one) is a ``ValueError``: BPTT needs the spiking
    simulation's T and λ and must not guess them.
    """
    from .producers import IFProducer, LIFProducer

    if not isinstance(producer, (IFProducer, LIFProducer)):
        name = type(producer).__name__
        raise ValueError(f"method 'bptt' unrolls the spiking simulation and needs the if or lif producer, not {name}")
    return producer.time_steps, float(producer.leak)
