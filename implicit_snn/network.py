"""The feedback spiking network and its equivalent fixed-point map (supplement Theorems 2–3).

Layers 1..N: layer 1 receives the input current F¹x + b¹ and the feedback W¹ s_N (one-step
delay); layer l+1 receives F^{l+1} s_l + b^{l+1} of the same step. N = 1 is the single-layer
network (W maps layer 1 to itself). The equivalent map, taken on the last layer, is

    f(a_N, x̄) = f_N ∘ … ∘ f_2 (σ((W¹ a_N + F¹ x̄ + b¹)/Vth)),   f_{l+1}(a) = σ((F^{l+1} a + b^{l+1})/Vth)

with σ = clamp(0, 1); intermediate layers are recomputed from a_N. Everything that must be the
same in the simulation and in f within one forward pass (dropout masks, the normalised feedback
weight, the input's batch-norm statistics) lives in a ``PassState`` made once per pass by
``map_inputs``; no module attribute carries state between calls except the power-iteration
vectors and batch-norm running statistics.

Batch norm (supplement F.2): during the simulation the input layer normalises with the batch
statistics of F¹x̄, computed once before the simulation (its input does not change over time,
so this is the same normalisation f uses), and the other layers with their running statistics.
The one differentiable evaluation of f (``differentiable_args``) uses the input layer's batch
statistics (now with their gradient) and, with ``bn_backward="batch"`` (the paper's and the
reference code's choice), batch statistics for layers 2..N too, so that the f it differentiates
is not the map the simulation ran; with ``bn_backward="simulated"`` it normalises layers 2..N
with the running statistics the simulation used, and its gradient is that of the computed loss.
Either way the running statistics move exactly once per training step, towards the batch
statistics at the equilibrium. In eval mode all layers use running statistics.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import torch
from torch import nn

from ._linearized import BatchNormBackward, Stage, TransposedJacobian
from ._ops import apply_op, apply_op_known
from .layers import BNMode, SynapticLayer, output_statistics
from .neurons import rate_and_slope

#: What the differentiated f normalises layers 2..N with in training: their batch statistics at the
#: equilibrium (the paper's choice), or the running statistics the simulation used.
BN_BACKWARDS = ("batch", "simulated")


def layer_shapes(in_shape: Sequence[int], input_layer: SynapticLayer, forward_layers: Sequence[SynapticLayer], *,
                 flatten_input: bool) -> tuple[tuple[int, ...], ...]:
    """Per-sample shapes of layers 1..N, by a dry run of the ops on one zero input."""
    with torch.no_grad():
        z = torch.zeros((1, *in_shape))
        z = input_layer.linear(z.flatten(1) if flatten_input else z)
        shapes = [tuple(z.shape[1:])]
        for layer in forward_layers:
            z = layer.linear(z)
            shapes.append(tuple(z.shape[1:]))
    return tuple(shapes)


@dataclasses.dataclass(frozen=True)
class PassState:
    """What one forward pass shares between the simulation and the fixed-point map.

    Attributes:
        feedback_weight: the effective (spectrally normalised) feedback weight W¹, with graph.
        input_mask: dropout mask of the input current, or None.
        forward_masks: dropout masks of the currents into layers 2..N.
        feedback_mask: dropout mask of the feedback current, or None.
        input_stats: batch statistics (mean, var) of F¹x̄ for the input batch norm, or None.
        batch_statistics: True for the differentiable evaluation of f (batch statistics,
            running statistics updated); False for the simulation and forward solvers.
        input_current: F¹x̄ + b¹ as the simulation and forward solvers see it (no graph), so
            that a forward solver's many evaluations of f do not recompute it.
        input_linear: the input op's output F¹x̄ + b¹ before batch norm and dropout (no graph),
            computed once per pass; the differentiable evaluation of f reuses its value.
    """

    feedback_weight: torch.Tensor
    input_mask: Optional[torch.Tensor]
    forward_masks: tuple[Optional[torch.Tensor], ...]
    feedback_mask: Optional[torch.Tensor]
    input_stats: Optional[tuple[torch.Tensor, torch.Tensor]]
    batch_statistics: bool = False
    input_current: Optional[torch.Tensor] = None
    input_linear: Optional[torch.Tensor] = None
    products: Optional["LowPrecisionProducts"] = None


@dataclasses.dataclass(frozen=True)
class LowPrecisionProducts:
    """The simulation's synaptic products in a lower precision (``implicit_snn.precision``): each
    op's weight and bias cast once per pass. Set only on the simulation's own ``PassState``
    (``FeedbackSNN.simulation_state``); f, its adjoint and the parameter gradient never see it."""

    dtype: torch.dtype
    base: torch.dtype  # the network's own dtype, which every current is returned in
    input: tuple[torch.Tensor, Optional[torch.Tensor]]
    forward: tuple[tuple[torch.Tensor, Optional[torch.Tensor]], ...]
    feedback: tuple[torch.Tensor, Optional[torch.Tensor]]

    def product(self, layer: SynapticLayer, x: torch.Tensor, weights: tuple[torch.Tensor, Optional[torch.Tensor]]
                ) -> torch.Tensor:
        """``layer``'s op on ``x`` in this dtype (its output rounded to it, as a native product's is)."""
        weight, bias = weights
        return apply_op(layer.op, x.to(self.dtype), weight, bias=False if bias is None else bias)

    def current(self, layer: SynapticLayer, x: torch.Tensor, weights: tuple[torch.Tensor, Optional[torch.Tensor]]
                ) -> torch.Tensor:
        """``product`` returned in the network's dtype, for batch norm, dropout and the potentials."""
        return self.product(layer, x, weights).to(self.base)


class FeedbackSNN(nn.Module):
    """A feedback spiking network: input layer, feed-forward layers, one feedback connection.

    Implements the producers' ``ImplicitNetwork`` protocol and the simulation hooks of the
    spiking producers (``input_current``, ``forward_current``, ``feedback_current``).

    Args:
        in_shape: per-sample, per-step input shape, e.g. ``(1, 28, 28)`` or ``(784,)``.
        input_layer: F¹ (+ b¹, batch norm, dropout), input → layer 1.
        forward_layers: F², …, F^N, layer l → layer l+1.
        feedback: W¹, layer N → layer 1, usually with a ``SpectralNorm``.
        vth: firing threshold Vth (2.0 in the paper).
        flatten_input: flatten each input to a vector before the input layer (fully connected
            networks on images).
        bn_backward: in training, the statistics the differentiated f normalises layers 2..N
            with: ``"batch"`` (their batch statistics; the paper's choice, which couples the
            samples) or ``"simulated"`` (the running statistics the simulation used: the gradient
            of the loss actually computed). See the module docstring.
    """

    def __init__(self, in_shape: Sequence[int], input_layer: SynapticLayer, forward_layers: Sequence[SynapticLayer],
                 feedback: SynapticLayer, *, vth: float = 2.0, flatten_input: bool = False, bn_backward: str = "batch"):
        super().__init__()
        if not vth > 0:
            raise ValueError(f"vth must be > 0, got {vth!r}")
        self.bn_backward = bn_backward
        self.in_shape = tuple(int(s) for s in in_shape)
        self.input_layer = input_layer
        self.forward_layers = nn.ModuleList(forward_layers)
        self.feedback = feedback
        self.flatten_input = flatten_input
        self.register_buffer("vth", torch.tensor(float(vth)))
        self.layer_shapes = self._infer_shapes()

    def _infer_shapes(self) -> tuple[tuple[int, ...], ...]:
        """Per-sample shapes of layers 1..N, checking that the feedback closes the loop."""
        shapes = layer_shapes(self.in_shape, self.input_layer, self.forward_layers, flatten_input=self.flatten_input)
        with torch.no_grad():
            back = self.feedback.linear(torch.zeros((1, *shapes[-1])))
        if tuple(back.shape[1:]) != shapes[0]:
            raise ValueError(
                f"the feedback maps layer {len(shapes)} {shapes[-1]} to {tuple(back.shape[1:])}, but layer 1 is "
                f"{shapes[0]}; choose a feedback whose output matches layer 1 (e.g. an upsampling transposed conv)"
            )
        return tuple(shapes)

    @property
    def bn_backward(self) -> str:
        """``"batch"`` or ``"simulated"``: see the class docstring."""
        return self._bn_backward

    @bn_backward.setter
    def bn_backward(self, value: str) -> None:
        if value not in BN_BACKWARDS:
            raise ValueError(f"bn_backward must be one of {BN_BACKWARDS}, got {value!r}")
        self._bn_backward = value

    @property
    def num_layers(self) -> int:
        """N, the number of spiking layers."""
        return len(self.layer_shapes)

    @property
    def num_neurons(self) -> int:
        """Spiking neurons in all layers (input units excluded)."""
        total = 0
        for shape in self.layer_shapes:
            count = 1
            for size in shape:
                count *= size
            total += count
        return total

    def _prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) if self.flatten_input else x

    def is_spike_train(self, x: torch.Tensor) -> bool:
        """True for ``[B, T, *in_shape]`` inputs, False for ``[B, *in_shape]``; anything else is an error."""
        if tuple(x.shape[1:]) == self.in_shape:
            return False
        if x.dim() == len(self.in_shape) + 2 and tuple(x.shape[2:]) == self.in_shape:
            return True
        raise ValueError(
            f"input shape {tuple(x.shape)} fits neither [B, {', '.join(map(str, self.in_shape))}] (static) "
            f"nor [B, T, {', '.join(map(str, self.in_shape))}] (spike train)"
        )

    # -- the producers' protocol -------------------------------------------------------------
    def map_inputs(self, x_bar: torch.Tensor) -> tuple[torch.Tensor, PassState]:
        """Start a forward pass for the (averaged) input ``x̄ [B, *in_shape]``: f's extra arguments.

        Draws the dropout masks, computes the effective feedback weight (one power-iteration
        step in training) and, in training, the input batch-norm statistics of F¹x̄.
        """
        batch = x_bar.shape[0]
        like = x_bar
        with torch.no_grad():  # once per pass: the statistics, the simulation's and f's input currents
            input_linear = self.input_layer.linear(self._prepare_input(x_bar))
        input_stats = None
        if self.training and self.input_layer.bn is not None:
            input_stats = output_statistics(input_linear)
        state = PassState(
            feedback_weight=self.feedback.effective_weight(update=self.training),
            input_mask=self.input_layer.sample_mask((batch, *self.layer_shapes[0]), like=like),
            forward_masks=tuple(layer.sample_mask((batch, *shape), like=like)
                                for layer, shape in zip(self.forward_layers, self.layer_shapes[1:])),
            feedback_mask=self.feedback.sample_mask((batch, *self.layer_shapes[0]), like=like),
            input_stats=input_stats,
            input_linear=input_linear,
        )
        with torch.no_grad():
            mode = self._bn_mode(state, given=input_stats is not None)
            current = self.input_layer.finish(input_linear, mask=state.input_mask, bn_mode=mode, stats=input_stats)
        return x_bar, dataclasses.replace(state, input_current=current)

    def differentiable_args(self, x_bar: torch.Tensor, state: PassState) -> tuple[torch.Tensor, PassState]:
        """f's arguments for the one differentiable evaluation: batch statistics in batch norm, and
        the feedback weight recomputed with its graph to α and W (same value: no power step)."""
        weight = self.feedback.effective_weight(update=False)
        return x_bar, dataclasses.replace(state, batch_statistics=True, feedback_weight=weight, input_current=None)

    def couples_samples(self, x_bar: torch.Tensor, state: PassState) -> bool:
        """Whether f with these arguments mixes the samples of the batch: batch norm with batch
        statistics after layer 1 (in f's differentiable evaluation in training). The input
        layer's statistics do not couple: they depend on x̄ only, not on a."""
        return (self._forward_bn_mode(state) is BNMode.BATCH
                and any(layer.bn is not None for layer in self.forward_layers))

    def initial_state(self, x: torch.Tensor) -> torch.Tensor:
        """Zero rates of the last layer, ``[B, *layer_shapes[-1]]``."""
        return x.new_zeros((x.shape[0], *self.layer_shapes[-1]))

    def fixed_point_map(self, a: torch.Tensor, x_bar: torch.Tensor, state: PassState) -> torch.Tensor:
        """f(a_N, x̄): the last layer's rates implied by last-layer rates ``a`` and input ``x̄``."""
        return self._evaluate(a, x_bar, state, None)

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Not a simulation and not a classifier: calling the network itself is refused, so that
        ``net(x)`` cannot be mistaken for either."""
        raise TypeError("a FeedbackSNN is not called directly: simulate it with a producer (producers.get_producer"
                        "('lif')(net, x)), classify with ImplicitClassifier(net, ...), or evaluate f with "
                        "net.fixed_point_map(a, x_bar, state)")

    def linearized_map(self, a: torch.Tensor, x_bar: torch.Tensor, state: PassState) -> tuple[torch.Tensor, TransposedJacobian]:
        """f(a_N, x̄) with its graph, and J_f(a)ᵀ as an explicit operator (see ``TransposedJacobian``).

        The same evaluation as ``fixed_point_map``; the operator's products equal the VJPs of the
        returned graph with respect to ``a`` (to rounding), at a fraction of their cost.
        """
        stages: list[Stage] = []
        rates = self._evaluate(a, x_bar, state, stages)
        return rates, TransposedJacobian(stages)

    def _evaluate(self, a: torch.Tensor, x_bar: torch.Tensor, state: PassState,
                  stages: Optional[list[Stage]]) -> torch.Tensor:
        """f(a_N, x̄); with a list for ``stages``, also fills it with J_fᵀ's stages, last layer first."""
        vth = self.vth
        current = self.input_drive(x_bar, state) + self.feedback_current(a, state)
        rates, slope = rate_and_slope(current, vth)
        if stages is not None:
            feedback = Stage(self.feedback.op, state.feedback_weight.detach(), tuple(a.shape),
                             self._gain(slope, state.feedback_mask, self.feedback.bn_scale(BNMode.RUNNING)))
        mode = self._forward_bn_mode(state)
        for index, layer in enumerate(self.forward_layers):
            mask = state.forward_masks[index]
            batch_stats = layer.bn is not None and mode is BNMode.BATCH
            # Before finish, which may move the running statistics this scale is made of.
            scale = layer.bn_scale(mode) if stages is not None and not batch_stats else None
            z = layer.linear(rates)
            current = layer.finish(z, mask=mask, bn_mode=mode)
            rates_in = rates
            rates, slope = rate_and_slope(current, vth)
            if stages is not None:
                batch_norm = BatchNormBackward.of(z, layer.bn.weight, layer.bn.eps) if batch_stats else None
                stages.append(Stage(layer.op, layer.op.weight.detach(), tuple(rates_in.shape),
                                    self._gain(slope, mask, scale), batch_norm))
        if stages is not None:
            stages.reverse()
            stages.append(feedback)
        return rates

    @staticmethod
    def _gain(slope: torch.Tensor, mask: Optional[torch.Tensor], scale: Optional[torch.Tensor]) -> torch.Tensor:
        """σ's slope times the dropout mask and a batch-norm scale, where present (``slope`` left as it is:
        the rate's backward saved it)."""
        gain = slope if mask is None else slope * mask
        return gain if scale is None else gain * scale

    # -- simulation hooks -------------------------------------------------------------------
    def _bn_mode(self, state: PassState, *, given: bool) -> BNMode:
        """The input layer's: batch statistics in f's differentiable evaluation in training, else the
        pass's given statistics (or the running ones)."""
        if state.batch_statistics and self.training:
            return BNMode.BATCH
        return BNMode.GIVEN if given else BNMode.RUNNING

    def _forward_bn_mode(self, state: PassState) -> BNMode:
        """Layers 2..N's: running statistics in the simulation, in f's differentiable evaluation in
        training what ``bn_backward`` says."""
        if state.batch_statistics and self.training:
            return BNMode.BATCH if self._bn_backward == "batch" else BNMode.RUNNING_THEN_UPDATED
        return BNMode.RUNNING

    def input_drive(self, x_bar: torch.Tensor, state: PassState) -> torch.Tensor:
        """F¹x̄ + b¹ for the pass's averaged input: the cached value, or computed (with grad) for f."""
        if state.input_current is not None:
            return state.input_current
        if state.input_linear is None:
            return self.input_current(x_bar, state)
        # The op's value is the pass's; only its graph is new (the op is not recomputed).
        z = apply_op_known(self.input_layer.op, self._prepare_input(x_bar), state.input_linear)
        mode = self._bn_mode(state, given=state.input_stats is not None)
        return self.input_layer.finish(z, mask=state.input_mask, bn_mode=mode, stats=state.input_stats)

    def simulation_state(self, state: PassState, dtype: Optional[torch.dtype]) -> PassState:
        """The pass's state for a simulation whose synaptic products run in ``dtype`` (weights and
        biases cast once, here), or ``state`` itself for None; f keeps using ``state``."""
        if dtype is None:
            return state

        def cast(layer: SynapticLayer, weight: Optional[torch.Tensor] = None):
            bias = layer.op.bias
            weight = layer.op.weight if weight is None else weight
            return weight.detach().to(dtype), None if bias is None else bias.detach().to(dtype)

        products = LowPrecisionProducts(
            dtype=dtype, base=state.feedback_weight.dtype, input=cast(self.input_layer),
            forward=tuple(cast(layer) for layer in self.forward_layers),
            feedback=cast(self.feedback, state.feedback_weight))
        return dataclasses.replace(state, products=products)

    def simulation_rows(self, state: PassState, rows: slice) -> PassState:
        """The pass's state for the samples ``rows`` alone: its per-sample tensors (dropout masks, the
        input current) sliced. The simulation never mixes samples (batch norm there uses given or
        running statistics), so chunks of the batch may be simulated one after another."""
        def part(tensor: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
            return None if tensor is None else tensor[rows]

        return dataclasses.replace(
            state, input_mask=part(state.input_mask), forward_masks=tuple(map(part, state.forward_masks)),
            feedback_mask=part(state.feedback_mask), input_current=part(state.input_current),
            input_linear=part(state.input_linear))

    def input_current(self, x_t: torch.Tensor, state: PassState) -> torch.Tensor:
        """F¹x_t + b¹ (batch norm, dropout) for one step's input ``[B, *in_shape]``."""
        mode = self._bn_mode(state, given=state.input_stats is not None)
        x_t = self._prepare_input(x_t)
        if state.products is not None:
            z = state.products.current(self.input_layer, x_t, state.products.input)
            return self.input_layer.finish(z, mask=state.input_mask, bn_mode=mode, stats=state.input_stats)
        return self.input_layer(x_t, mask=state.input_mask, bn_mode=mode, stats=state.input_stats)

    def forward_current(self, index: int, spikes: torch.Tensor, state: PassState) -> torch.Tensor:
        """F^{index+2} s + b into layer ``index + 2`` from layer ``index + 1``'s activity."""
        layer, mask, mode = self.forward_layers[index], state.forward_masks[index], self._forward_bn_mode(state)
        if state.products is not None:
            z = state.products.current(layer, spikes, state.products.forward[index])
            return layer.finish(z, mask=mask, bn_mode=mode)
        return layer(spikes, mask=mask, bn_mode=mode)

    def feedback_current(self, spikes: torch.Tensor, state: PassState) -> torch.Tensor:
        """W¹ s_N into layer 1 (no bias, no batch norm, its dropout mask)."""
        if state.products is not None:
            z = state.products.current(self.feedback, spikes, state.products.feedback)
            return self.feedback.finish(z, mask=state.feedback_mask)
        return self.feedback(spikes, weight=state.feedback_weight, mask=state.feedback_mask)

    def add_feedback_current(self, drive: torch.Tensor, spikes: torch.Tensor, state: PassState) -> torch.Tensor:
        """``drive + feedback_current(spikes, state)`` as one product-and-add where the feedback allows."""
        feedback = self.feedback
        if feedback.bn is not None:
            return drive + self.feedback_current(spikes, state)
        if state.products is not None:
            # The low-precision product (times the mask) is added to the float32 drive in one float32
            # pass, not cast, masked and added in three: the same sum wherever the masked product is
            # exact (no dropout, or F400's 1/(1 − 0.2)), else one rounding fewer.
            product = state.products.product(feedback, spikes, state.products.feedback)
        elif (isinstance(feedback.op, nn.Linear) and spikes.dim() == 2 and feedback.op.bias is None
              and state.feedback_mask is None):
            return torch.addmm(drive, spikes, state.feedback_weight.t())
        else:
            product = feedback.linear(spikes, state.feedback_weight)
        if state.feedback_mask is not None:
            return torch.addcmul(drive, product, state.feedback_mask)
        # In place where the product has the drive's dtype; a low-precision one is summed in float32.
        return product.add_(drive) if product.dtype == drive.dtype else drive + product

    def extra_repr(self) -> str:
        return (f"in_shape={self.in_shape}, layer_shapes={self.layer_shapes}, vth={float(self.vth)}, "
                f"bn_backward={self._bn_backward!r}")
