"""Synaptic operations and an energy estimate, per layer and per sample, for inference and for a training step.

The convention of the SNN literature: a spike that reaches a synapse triggers one accumulate
(a synaptic operation, SOP), so a layer's SOPs are its presynaptic spikes times their fan-out;
a real-valued input drives its layer by multiply-accumulates (MACs), as does the linear
read-out of the rates. The same architecture run as a non-spiking network pays one MAC per
synapse per pass. Energy is SOPs × E_SOP + MACs × E_MAC with per-operation energies that are
assumptions (``OperationEnergy``: by default 0.9 pJ per accumulate and 4.6 pJ per
multiply-accumulate, 32-bit floating point on 45 nm CMOS, Horowitz, ISSCC 2014), not
measurements of any chip.

Fan-outs are counted exactly from each operation's structure (linear, convolutions with any
stride, padding, dilation and groups, transposed convolutions): a neuron at an image's border
drives fewer synapses than one inside. Synapses are structural: a weight that happens to be
zero still counts, and dropout (training only) is not subtracted. Biases and batch norm are
left out: they add per neuron, not per synapse.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, Sequence

import torch
from torch import nn

from .._ops import OpModule, apply_op
from ..classifier import ImplicitClassifier
from ..producers import Producer
from ._activity import SpikeCensus, recording
from ._common import preserved, training_step_gradient


@dataclasses.dataclass(frozen=True)
class OperationEnergy:
    """Energy per operation in picojoules: assumptions to state beside any estimate made with them.

    Attributes:
        per_sop_pj: one accumulate triggered by a spike (default 0.9 pJ, a 32-bit float add on 45 nm CMOS).
        per_mac_pj: one multiply-accumulate (default 4.6 pJ: a 3.7 pJ multiply and a 0.9 pJ add).
    """

    per_sop_pj: float = 0.9
    per_mac_pj: float = 4.6

    def __post_init__(self) -> None:
        for name in ("per_sop_pj", "per_mac_pj"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
                raise ValueError(f"`{name}` must be a finite number >= 0 (picojoules), got {value!r}")

    def of(self, sops: float, macs: float) -> float:
        """The energy in pJ of ``sops`` synaptic operations and ``macs`` multiply-accumulates."""
        return sops * self.per_sop_pj + macs * self.per_mac_pj


def _ones_pass(op: OpModule, in_shape: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(fan_out [*in_shape], fan_in [*out_shape])``: the op with every weight and input 1 (float64, exact)."""
    weight = torch.ones(op.weight.shape, dtype=torch.float64)
    x = torch.ones((1, *in_shape), dtype=torch.float64, requires_grad=True)
    with torch.enable_grad():
        out = apply_op(op, x, weight, bias=False)
        (fan_out,) = torch.autograd.grad(out.sum(), x)
    return fan_out[0], out[0].detach()


def fan_out(op: OpModule, in_shape: Sequence[int]) -> torch.Tensor:
    """``[*in_shape]``: how many synapses (output elements × kernel taps) each input element of ``op`` drives."""
    return _ones_pass(op, in_shape)[0]


def fan_in(op: OpModule, in_shape: Sequence[int]) -> torch.Tensor:
    """``[*out_shape]``: how many synapses reach each output element of ``op`` for inputs of ``in_shape``."""
    return _ones_pass(op, in_shape)[1]


def synapses(op: OpModule, in_shape: Sequence[int]) -> int:
    """The op's synapses for one input of ``in_shape``: MACs of one dense pass."""
    return int(fan_in(op, in_shape).sum())


def _kind(op: nn.Module) -> str:
    if isinstance(op, nn.ConvTranspose2d):
        return "conv_transpose"
    return "conv" if isinstance(op, nn.Conv2d) else "linear"


@dataclasses.dataclass(frozen=True)
class LayerEnergy:
    """One synaptic layer's operations and energy per sample.

    Attributes:
        name: ``input``, ``forward l→l+1``, ``feedback N→1`` or ``readout``.
        kind: ``linear``, ``conv`` or ``conv_transpose``.
        pre, post: what it connects (``input``, ``layer l``, ``classes``).
        synapses: its synapses for one sample (the MACs of one dense pass).
        spikes_per_sample: presynaptic spikes (or input events) it delivered; None for real values.
        sops_per_sample: spikes × fan-out.
        macs_per_sample: multiply-accumulates of the spiking network on real values (the constant
            input's layer once, the read-out once).
        ann_macs_per_sample: MACs of the same layer in a non-spiking network, one pass.
        dense_macs_per_sample: what the simulation computes on dense hardware (a CPU or GPU):
            one pass per step for layers driven by spikes.
        energy_pj, ann_energy_pj: the spiking and the non-spiking network's estimate.
    """

    name: str
    kind: str
    pre: str
    post: str
    synapses: int
    spikes_per_sample: Optional[float]
    sops_per_sample: float
    macs_per_sample: float
    ann_macs_per_sample: float
    dense_macs_per_sample: float
    energy_pj: float
    ann_energy_pj: float


@dataclasses.dataclass(frozen=True)
class EnergyReport:
    """Per-layer and total operations and energy per sample of a spiking simulation (``energy_report``)."""

    samples: int
    time_steps: int
    input: str  # "constant" (a real-valued current) or "spikes" (a spike train)
    costs: OperationEnergy
    layers: tuple[LayerEnergy, ...]

    @property
    def total(self) -> dict[str, float]:
        """Sums over the layers, the network's spikes per sample, and the non-spiking/spiking energy ratio."""
        def add(field: str) -> float:
            return float(sum(getattr(row, field) for row in self.layers))
        energy, ann = add("energy_pj"), add("ann_energy_pj")
        recurrent = [r for r in self.layers if r.name.startswith(("forward", "feedback"))]
        return {"sops_per_sample": add("sops_per_sample"), "macs_per_sample": add("macs_per_sample"),
                "ann_macs_per_sample": add("ann_macs_per_sample"), "dense_macs_per_sample": add("dense_macs_per_sample"),
                "ann_macs_per_iteration": float(sum(r.synapses for r in recurrent)),
                "energy_pj": energy, "ann_energy_pj": ann, "ann_over_snn": ann / energy if energy > 0 else math.inf}

    def to_dict(self) -> dict[str, Any]:
        """Plain numbers for JSON."""
        return {"samples": self.samples, "time_steps": self.time_steps, "input": self.input,
                "energy_per_sop_pj": self.costs.per_sop_pj, "energy_per_mac_pj": self.costs.per_mac_pj,
                "layers": [dataclasses.asdict(row) for row in self.layers], "total": self.total}


def _network_ops(model: ImplicitClassifier) -> list[tuple[str, OpModule, tuple[int, ...], str, str]]:
    """(name, op, per-sample input shape, pre, post) of every synaptic layer of the network, read-out excluded."""
    network = model.network
    shapes = network.layer_shapes
    n = len(shapes)
    in_shape = (math.prod(network.in_shape),) if network.flatten_input else tuple(network.in_shape)
    ops = [("input", network.input_layer.op, in_shape, "input", "layer 1")]
    for index, layer in enumerate(network.forward_layers):
        ops.append((f"forward {index + 1}→{index + 2}", layer.op, shapes[index], f"layer {index + 1}",
                    f"layer {index + 2}"))
    ops.append((f"feedback {n}→1", network.feedback.op, shapes[-1], f"layer {n}", "layer 1"))
    return ops


def _readout(model: ImplicitClassifier) -> tuple[int, int]:
    classifier = model.classifier
    return classifier.in_features, classifier.out_features


def energy_report(model: ImplicitClassifier, census: SpikeCensus,
                  costs: OperationEnergy = OperationEnergy()) -> EnergyReport:
    """Synaptic operations and energy per sample, per layer, from a ``spike_census`` of ``model``.

    Spikes of layer l drive the synapses of layer l+1 in the same step; the last layer's drive
    the feedback one step later, so its last step's spikes are not counted there. A constant
    input is applied once (its MACs are paid once per sample, as the simulation computes it);
    a spike-train input's events drive the input layer's synapses as SOPs.
    """
    n, steps = census.samples, census.time_steps
    spike_input = census.input_events is not None
    layers = []
    for index, (name, op, in_shape, pre, post) in enumerate(_network_ops(model)):
        outs, ins = _ones_pass(op, in_shape)
        count = int(ins.sum())
        if name == "input":
            if spike_input:
                events = census.input_events.reshape(-1)
                spikes = float(events.sum()) / n
                sops, macs, dense = float((events * outs.reshape(-1)).sum()) / n, 0.0, float(steps * count)
            else:
                spikes, sops, macs, dense = None, 0.0, float(count), float(count)
        else:
            delivered = census.feedback_spikes if name.startswith("feedback") else census.spikes[index - 1]
            spikes = float(delivered.sum()) / n
            sops = float((delivered * outs).sum()) / n
            # The feedback is computed after every step but the last; the forward layers at every step.
            macs, dense = 0.0, float((steps - 1 if name.startswith("feedback") else steps) * count)
        layers.append(LayerEnergy(name=name, kind=_kind(op), pre=pre, post=post, synapses=count,
                                  spikes_per_sample=spikes, sops_per_sample=sops, macs_per_sample=macs,
                                  ann_macs_per_sample=float(count), dense_macs_per_sample=dense,
                                  energy_pj=costs.of(sops, macs), ann_energy_pj=costs.of(0.0, count)))
    features, classes = _readout(model)
    readout = features * classes
    layers.append(LayerEnergy(name="readout", kind="linear", pre=f"layer {len(census.layer_shapes)}", post="classes",
                              synapses=readout, spikes_per_sample=None, sops_per_sample=0.0,
                              macs_per_sample=float(readout), ann_macs_per_sample=float(readout),
                              dense_macs_per_sample=float(readout), energy_pj=costs.of(0.0, readout),
                              ann_energy_pj=costs.of(0.0, readout)))
    return EnergyReport(samples=n, time_steps=steps, input="spikes" if spike_input else "constant", costs=costs,
                        layers=tuple(layers))


class _Capturing(Producer):
    """A producer that hands on another's equilibria and keeps them (to count a training step's spikes)."""

    def __init__(self, inner: Any):
        self.inner, self.seen = inner, []

    def __call__(self, network: Any, x: torch.Tensor):
        eq = self.inner(network, x)
        self.seen.append(eq)
        return eq


@dataclasses.dataclass(frozen=True)
class TrainingStepCost:
    """The operations of one IDE training step per sample, and their energy (``training_step_cost``).

    Attributes:
        batch: samples in the step.
        solver: the backward solver.
        forward: the simulation (``EnergyReport`` of the batch, train mode) plus the one
            differentiable evaluation of f and the read-out: ``sops``, ``macs``, ``energy_pj``.
        backward: ``vjps`` (the adjoint solve's evaluations of Jᵀ, for the whole batch),
            ``macs_per_vjp``, ``theta_pass_macs`` (the final pass into the parameters and the
            read-out's gradients), ``macs`` (all of it as dense MACs: what a CPU or GPU does) and
            ``energy_pj``; for a spike-based backward also ``spikes`` and ``sops`` of its spikes
            and ``event_driven_macs``/``event_driven_energy_pj`` (its spikes as SOPs, only the
            rest as MACs).
    """

    batch: int
    solver: str
    forward: dict[str, float]
    backward: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        """Plain numbers for JSON, with the step's total energy per sample."""
        backward_energy = self.backward.get("event_driven_energy_pj", self.backward["energy_pj"])
        return {"batch": self.batch, "solver": self.solver, "forward": self.forward, "backward": self.backward,
                "energy_pj": self.forward["energy_pj"] + backward_energy}


def training_step_cost(model: ImplicitClassifier, x: torch.Tensor, y: torch.Tensor, *,
                       costs: OperationEnergy = OperationEnergy(), seed: int = 0) -> TrainingStepCost:
    """Operations per sample of one IDE training step of ``model`` on ``(x, y)`` with its own backward solver.

    Forward: the simulation's SOPs and MACs as in ``energy_report`` (train mode: dropout masks
    drawn with ``seed``), plus the one differentiable evaluation of f (the feedback and forward
    layers; the input layer's product is reused) and the read-out. Backward: each of the adjoint
    solve's VJPs applies Jᵀ, one transposed pass through the feedback and forward layers; the
    final pass into the parameters costs a pass through every layer for the weight gradients
    and one through the forward layers to reach the earlier ones, and the read-out two. A
    spike-based backward (the ``spide`` solver) feeds ternary spikes through Jᵀ: those that
    enter its first stage are SOPs (an upper bound: σ's zero slope would gate some); in a
    multi-layer network the later stages carry real values and stay MACs. The model is left as it was.
    """
    if model.method != "ide":
        raise ValueError("a training step's cost is measured for IDE (method 'ide'); BPTT has no adjoint solve")
    network = model.network
    with preserved(model) as state:
        model.train()
        capture = _Capturing(recording(model))
        model.producer = capture
        training_step_gradient(model, state, x, y, seed)
        result = model.last_backward
        solver = model.adjoint.name
    census = SpikeCensus.empty(capture.inner.time_steps, network.layer_shapes)
    census.add(capture.seen[0], x, network.is_spike_train(x))
    simulation = energy_report(model, census, costs)
    *counts, readout = (row.synapses for row in simulation.layers)  # the network's layers, then the read-out
    per_vjp = float(sum(counts[1:]))  # Jᵀ: the forward layers and the feedback, transposed
    sops = simulation.total["sops_per_sample"]
    macs = simulation.total["macs_per_sample"] + per_vjp  # the read-out is in the simulation's report
    forward = {"spikes": float(sum(s.sum() for s in census.spikes)) / census.samples, "sops": sops, "macs": macs,
               "energy_pj": costs.of(sops, macs)}
    vjps = int(result.n_evals) if result is not None else 0
    theta = float(sum(counts)) + float(sum(counts[1:-1])) + 2 * readout
    dense = vjps * per_vjp + theta
    backward: dict[str, float] = {"vjps": vjps, "macs_per_vjp": per_vjp, "theta_pass_macs": theta, "macs": dense,
                                  "energy_pj": costs.of(0.0, dense)}
    events = None if result is None else result.counters.get("spike_events")
    if events is not None:
        # The first stage of Jᵀ transposes the op into the last layer: a spike there reaches its fan-in.
        ops = _network_ops(model)
        _, first_op, first_in, _, _ = ops[-2] if len(ops) > 2 else ops[-1]
        reach = fan_in(first_op, first_in)
        events = events.detach().double().cpu().reshape(events.shape[0], *reach.shape)
        spike_sops = float((events * reach).sum()) / events.shape[0]
        fed = max(vjps - 1, 0)  # all but the final measuring evaluation are fed spikes (c is the offset, not an evaluation)
        first_synapses = float(reach.sum())
        event_macs = fed * (per_vjp - first_synapses) + theta
        backward.update(spikes=float(events.sum()) / events.shape[0], sops=spike_sops, event_driven_macs=event_macs,
                        event_driven_energy_pj=costs.of(spike_sops, event_macs))
    return TrainingStepCost(batch=int(x.shape[0]), solver=solver, forward=forward, backward=backward)
