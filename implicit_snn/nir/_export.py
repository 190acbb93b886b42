"""A trained feedback SNN as a NIR graph: exact (reset by subtraction as a Scale edge) or portable.

Our discrete-time neuron is, per step t, u ← λ·u + I_t; s_t = [u ≥ V_th]; u ← u − V_th·s_t.
Written for the potential before the reset, v_t = λ·v_{t−1} + I_t − λ·V_th·s_{t−1}: a leaky
integrator (NIR ``LI``; ``I`` for IF, λ = 1) whose input is the synaptic current plus the last
step's spikes through a ``Scale(−λ·V_th)``, followed by a ``Threshold(V_th)``. NIR's LI,
τ v̇ = (v_leak − v) + R I, integrated by forward Euler with step dt, is
v_t = (1 − dt/τ)·v_{t−1} + (dt/τ)·R·I_t: with τ = dt/(1 − λ), R = τ/dt and v_leak = 0 it is
ours exactly (``I``: v̇ = R I with R = 1/dt). Edges that close a cycle (the reset, the feedback)
deliver the previous step's output, as NIR's recurrent graphs do.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from ..layers import SynapticLayer
from ..neurons import rate_weights
from ._nodes import require_nir

MODES = ("exact", "portable")
#: The step of the forward-Euler discretisation recorded in the graph (snnTorch's choice).
DEFAULT_DT = 1e-4
#: The ``metadata["encoding"]`` of graphs written here, which ``from_nir`` recognises.
ENCODING = "implicit-snn/1"


class NIRExportError(ValueError):
    """A network, or a part of it, that has no NIR equivalent; the message names it and why."""


def to_nir(model: nn.Module, mode: str = "exact", *, time_steps: Optional[int] = None, leak: Optional[float] = None,
           dt: float = DEFAULT_DT, lossy: bool = False) -> Any:
    """The eval-mode network of ``model`` (an ``ImplicitClassifier`` on a ``FeedbackSNN``) as a ``nir.NIRGraph``.

    Replayed for T steps on an input held constant (or one frame per step), the graph's output
    at step T is ``model.eval()(x)``'s logits. ``mode="exact"`` keeps reset by subtraction (an
    integrator, a Threshold and a Scale edge back into the integrator); ``mode="portable"`` uses
    NIR's LIF/IF nodes, which reset to zero: lossy, so refused unless ``lossy=True``.

    Args:
        model: the classifier; its producer (``if`` or ``lif``) gives T and λ unless given.
        mode: ``"exact"`` or ``"portable"``.
        time_steps: overrides the producer's T (the read-out's normalisation uses it).
        leak: overrides the producer's λ.
        dt: the forward-Euler step that the time constants are expressed in.
        lossy: accept the portable mode's loss.

    Raises:
        NIRExportError: a part with no NIR equivalent (named), a training-mode network, the
            analytic producer, or portable mode without ``lossy=True``.
    """
    nir = require_nir()
    network, classifier = _parts(model)
    if mode not in MODES:
        raise NIRExportError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "portable" and not lossy:
        raise NIRExportError("portable mode is lossy: NIR's LIF/IF nodes reset to zero where our neurons subtract "
                             "the threshold, so spikes and logits change; pass lossy=True (--lossy) to accept it")
    steps, lam = _dynamics(model, time_steps, leak)
    if not (isinstance(dt, (int, float)) and math.isfinite(dt) and dt > 0):
        raise NIRExportError(f"dt must be a finite number > 0, got {dt!r}")
    dtype = network.vth.dtype if network.vth.is_floating_point() else torch.float32
    vth = float(network.vth)
    nodes: dict[str, Any] = {"input": nir.Input(input_type={"input": np.array(network.in_shape)})}
    edges: list[tuple[str, str]] = []
    last = "input"
    if network.flatten_input:
        nodes["input_flatten"] = nir.Flatten(input_type={"input": np.array(network.in_shape)}, start_dim=0, end_dim=-1)
        edges.append(("input", "input_flatten"))
        last = "input_flatten"
    in_shape = (math.prod(network.in_shape),) if network.flatten_input else network.in_shape
    nodes["input_layer"] = _synapse(nir, "input layer", network.input_layer, None, in_shape, dtype)
    edges.append((last, "input_layer"))
    shapes = network.layer_shapes
    for index, shape in enumerate(shapes, start=1):
        neuron = f"layer{index}"
        _add_neuron(nir, nodes, edges, neuron, shape, vth, lam, dt, mode, dtype)
        source = "input_layer" if index == 1 else f"forward{index - 1}"
        edges.append((source, _entry(neuron, mode)))
        if index < len(shapes):
            layer = network.forward_layers[index - 1]
            nodes[f"forward{index}"] = _synapse(nir, f"forward layer {index}→{index + 1}", layer, None, shape, dtype)
            edges.append((_spikes(neuron, mode), f"forward{index}"))
    top = f"layer{len(shapes)}"
    weight = network.feedback.effective_weight(update=False).detach()
    nodes["feedback"] = _synapse(nir, f"feedback {len(shapes)}→1", network.feedback, weight, shapes[-1], dtype)
    edges.append((_spikes(top, mode), "feedback"))
    edges.append(("feedback", _entry("layer1", mode)))
    # The read-out: Σₜ λ^(T−t) s_t scaled by 1/Σₖ λᵏ is the producer's rate; a leaky integrator with
    # R = norm·τ/dt computes exactly that sum, so the classifier's own weights follow unchanged.
    norm = float(rate_weights(steps, lam, dtype=torch.float64)[-1])
    nodes["readout_integrator"] = _integrator(nir, shapes[-1], lam, dt, norm, dtype)
    edges.append((_spikes(top, mode), "readout_integrator"))
    last = "readout_integrator"
    if len(shapes[-1]) > 1:
        nodes["readout_flatten"] = nir.Flatten(input_type={"input": np.array(shapes[-1])}, start_dim=0, end_dim=-1)
        edges.append((last, "readout_flatten"))
        last = "readout_flatten"
    nodes["readout"] = nir.Affine(weight=_array(classifier.weight, dtype), bias=_array(classifier.bias, dtype))
    edges.append((last, "readout"))
    nodes["output"] = nir.Output(output_type={"output": np.array([classifier.out_features])})
    edges.append(("readout", "output"))
    metadata = {
        "encoding": ENCODING, "mode": mode, "time_steps": steps, "leak": lam, "dt": float(dt), "vth": vth,
        "discretisation": "forward Euler: v_t = v_{t-1} + dt*dv/dt(v_{t-1}, I_t); edges that close a cycle "
                          "deliver the previous step's output",
        "threshold": "spike where v >= vth (NIR's Threshold reads v > vth; they differ only at equality)",
        "reset": ("subtraction: Scale(-leak*vth) edge from the spikes back into the integrator" if mode == "exact"
                  else "to zero (NIR LIF/IF v_reset = 0): lossy, not the trained network's subtraction"),
        "input": "a static input held constant for time_steps steps, or one frame per step",
        "output": "the logits: the output at step time_steps",
    }
    graph = nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata)
    check_connected(graph)
    return graph


def _parts(model: nn.Module) -> tuple[Any, nn.Linear]:
    """The ``FeedbackSNN`` and read-out of ``model``, checked exportable."""
    from ..network import FeedbackSNN

    network = getattr(model, "network", None)
    classifier = getattr(model, "classifier", None)
    if not isinstance(network, FeedbackSNN) or not isinstance(classifier, nn.Linear):
        raise NIRExportError(f"to_nir exports an ImplicitClassifier on a FeedbackSNN, got {type(model).__name__}")
    if model.training and _has_training_behaviour(network):
        raise NIRExportError("the model is in training mode: batch statistics and dropout masks have no NIR "
                             "equivalent; call model.eval() first (running statistics are folded into the weights)")
    return network, classifier


def _has_training_behaviour(network: Any) -> bool:
    layers = [network.input_layer, *network.forward_layers, network.feedback]
    return any(layer.bn is not None or layer.dropout > 0 for layer in layers)


def _dynamics(model: nn.Module, time_steps: Optional[int], leak: Optional[float]) -> tuple[int, float]:
    """T and λ: the producer's (IF: λ = 1), or the given ones."""
    producer = getattr(model, "producer", None)
    own_steps = getattr(producer, "time_steps", None)
    if own_steps is None and time_steps is None:
        raise NIRExportError(f"the {type(producer).__name__} producer has no spiking equivalent (no simulation to "
                             "export); set a spiking producer (model.set_producer('lif')) or pass time_steps and leak")
    steps = own_steps if time_steps is None else time_steps
    lam = float(getattr(producer, "leak", 1.0) if leak is None else leak)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise NIRExportError(f"time_steps must be an int >= 1, got {steps!r}")
    if not 0.0 < lam <= 1.0:
        raise NIRExportError(f"leak must be in (0, 1], got {lam!r}")
    return steps, lam


def _array(tensor: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    return tensor.detach().to(device="cpu", dtype=dtype).numpy().copy()


def _integrator(nir: Any, shape: tuple[int, ...], lam: float, dt: float, gain: float, dtype: torch.dtype) -> Any:
    """v_t = λ v_{t−1} + gain·I_t as a NIR node: LI (λ < 1) or I (λ = 1)."""
    np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
    if lam == 1.0:
        return nir.I(r=np.full(shape, gain / dt, dtype=np_dtype))
    tau = dt / (1.0 - lam)
    return nir.LI(tau=np.full(shape, tau, dtype=np_dtype), r=np.full(shape, gain * tau / dt, dtype=np_dtype),
                  v_leak=np.zeros(shape, dtype=np_dtype))


def _add_neuron(nir: Any, nodes: dict, edges: list, name: str, shape: tuple[int, ...], vth: float, lam: float,
                dt: float, mode: str, dtype: torch.dtype) -> None:
    """One layer of neurons: integrator + threshold + reset edge (exact), or one LIF/IF node (portable)."""
    np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
    if mode == "portable":
        threshold = np.full(shape, vth, dtype=np_dtype)
        if lam == 1.0:
            nodes[name] = nir.IF(r=np.full(shape, 1.0 / dt, dtype=np_dtype), v_threshold=threshold,
                                 v_reset=np.zeros(shape, dtype=np_dtype))
        else:
            tau = dt / (1.0 - lam)
            nodes[name] = nir.LIF(tau=np.full(shape, tau, dtype=np_dtype), r=np.full(shape, tau / dt, dtype=np_dtype),
                                  v_leak=np.zeros(shape, dtype=np_dtype), v_threshold=threshold,
                                  v_reset=np.zeros(shape, dtype=np_dtype))
        return
    nodes[f"{name}_integrator"] = _integrator(nir, shape, lam, dt, 1.0, dtype)
    nodes[f"{name}_threshold"] = nir.Threshold(threshold=np.full(shape, vth, dtype=np_dtype))
    nodes[f"{name}_reset"] = nir.Scale(scale=np.full(shape, -lam * vth, dtype=np_dtype))
    edges += [(f"{name}_integrator", f"{name}_threshold"), (f"{name}_threshold", f"{name}_reset"),
              (f"{name}_reset", f"{name}_integrator")]


def _entry(neuron: str, mode: str) -> str:
    """The node a layer's synaptic current enters."""
    return neuron if mode == "portable" else f"{neuron}_integrator"


def _spikes(neuron: str, mode: str) -> str:
    """The node a layer's spikes leave from."""
    return neuron if mode == "portable" else f"{neuron}_threshold"


def _synapse(nir: Any, where: str, layer: SynapticLayer, weight: Optional[torch.Tensor], in_shape: tuple[int, ...],
             dtype: torch.dtype) -> Any:
    """A synaptic layer (op, eval-mode batch norm folded in, dropout gone) as Affine/Linear/Conv2d."""
    op = layer.op
    weight = (op.weight if weight is None else weight).detach().to(torch.float64)
    bias = None if op.bias is None else op.bias.detach().to(torch.float64)
    if isinstance(op, nn.ConvTranspose2d):
        weight, op_args = _transposed_as_conv(where, op, weight, in_shape)
    elif isinstance(op, nn.Conv2d):
        op_args = dict(stride=op.stride, padding=op.padding, dilation=op.dilation, groups=op.groups)
    else:
        op_args = None
    if layer.bn is not None:
        bn = layer.bn
        scale = torch.rsqrt(bn.running_var.detach().to(torch.float64) + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight.detach().to(torch.float64)
        shift = -bn.running_mean.detach().to(torch.float64) * scale
        if bn.bias is not None:
            shift = shift + bn.bias.detach().to(torch.float64)
        weight = weight * scale.reshape(-1, *([1] * (weight.dim() - 1)))
        bias = shift if bias is None else bias * scale + shift
    if op_args is None:
        if bias is None:
            return nir.Linear(weight=_array(weight, dtype))
        return nir.Affine(weight=_array(weight, dtype), bias=_array(bias, dtype))
    out_channels = weight.shape[0]
    bias = torch.zeros(out_channels, dtype=torch.float64) if bias is None else bias
    return nir.Conv2d(input_shape=tuple(int(s) for s in in_shape[-2:]), weight=_array(weight, dtype),
                      stride=tuple(op_args["stride"]), padding=tuple(op_args["padding"]),
                      dilation=tuple(op_args["dilation"]), groups=int(op_args["groups"]), bias=_array(bias, dtype))


def _transposed_as_conv(where: str, op: nn.ConvTranspose2d, weight: torch.Tensor,
                        in_shape: tuple[int, ...]) -> tuple[torch.Tensor, dict[str, Any]]:
    """A stride-1 transposed convolution as the convolution it equals: kernel flipped, channels swapped."""
    if tuple(op.stride) != (1, 1):
        raise NIRExportError(f"the {where} is a transposed convolution of stride {tuple(op.stride)}: NIR has no "
                             "transposed convolution, and only stride 1 equals a plain convolution")
    if op.groups != 1 or any(op.output_padding):
        raise NIRExportError(f"the {where} is a transposed convolution with groups or output padding, which has "
                             "no plain-convolution equivalent here")
    kernel = weight.flip(-1, -2).transpose(0, 1)
    padding = tuple(d * (k - 1) - p for d, k, p in zip(op.dilation, op.kernel_size, op.padding))
    if any(p < 0 for p in padding):
        raise NIRExportError(f"the {where}'s padding exceeds its kernel's reach; it has no convolution equivalent")
    return kernel, dict(stride=(1, 1), padding=padding, dilation=tuple(op.dilation), groups=1)


def check_connected(graph: Any) -> None:
    """Refuse a graph with a node that no path from the input reaches or that reaches no output
    (NIR executors such as ``nirtorch.nir_to_torch`` wait forever for such a node's input)."""
    forward: dict[str, list[str]] = {name: [] for name in graph.nodes}
    backward: dict[str, list[str]] = {name: [] for name in graph.nodes}
    for source, target in graph.edges:
        for end in (source, target):
            if end not in graph.nodes:
                raise NIRExportError(f"the graph has an edge {source!r} → {target!r} to a node that does not exist")
        forward[source].append(target)
        backward[target].append(source)
    inputs = [n for n, node in graph.nodes.items() if type(node).__name__ == "Input"]
    outputs = [n for n, node in graph.nodes.items() if type(node).__name__ == "Output"]
    reached, feeding = _closure(inputs, forward), _closure(outputs, backward)
    loose = [name for name in graph.nodes if name not in reached or name not in feeding]
    if loose:
        raise NIRExportError(f"the graph's node(s) {loose} are not on a path from its input to its output")


def _closure(starts: list[str], adjacency: dict[str, list[str]]) -> set[str]:
    seen, stack = set(starts), list(starts)
    while stack:
        for nxt in adjacency[stack.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen
