"""Networks from the paper's notation, e.g. "400 (F400)" or "96C3s-256C3-384C3s-384C3-256C3 (F96C3u)".

Layers are separated by "-": ``N`` is a fully connected layer of N neurons, ``NCk`` a
convolution with N channels and a k×k kernel, a trailing ``s`` makes it stride 2. The part in
parentheses is the feedback from the last layer to the first: ``FN`` (fully connected), ``FNCk``
(convolution, stride 1) or ``FNCku`` (transposed convolution upsampling by 2); N must equal the
first layer's size. Padding is (k − 1) // 2 throughout (``input_padding`` overrides the input
layer's). Every layer but the feedback has a bias and batch norm; every layer, the feedback
included, has variational dropout; the feedback alone carries the spectral-norm constraint.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Optional, Sequence

from torch import nn

from implicit_snn import FeedbackSNN, ImplicitClassifier, SpectralNorm, SynapticLayer
from implicit_snn.network import layer_shapes

_LAYER = re.compile(r"^(\d+)(?:C(\d+)(s?))?$")
_FEEDBACK = re.compile(r"^F(\d+)(?:C(\d+)(u?))?$")
_SPEC = re.compile(r"^\s*([^()]+?)\s*\(\s*([^()]+?)\s*\)\s*$")


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """One layer: ``channels`` units (or conv channels), ``kernel`` (None for fully connected), ``stride``."""

    channels: int
    kernel: Optional[int]
    stride: int = 1

    @property
    def is_conv(self) -> bool:
        return self.kernel is not None


@dataclasses.dataclass(frozen=True)
class NetworkSpec:
    """A parsed spec: the layers in order and the feedback (``upsample`` for a transposed conv)."""

    layers: tuple[LayerSpec, ...]
    feedback: LayerSpec
    upsample: bool


def parse_spec(spec: str) -> NetworkSpec:
    """Parse the paper's notation; a malformed spec is a ``ValueError`` saying which part is wrong."""
    if not isinstance(spec, str):
        raise TypeError(f"a network spec must be a string, got {type(spec).__name__}")
    match = _SPEC.match(spec)
    if match is None:
        raise ValueError(f"network spec {spec!r} must look like 'LAYERS (FEEDBACK)', e.g. '400 (F400)' or '64C5s (F64C5)'")
    body, feedback_text = match.groups()
    layers = []
    for token in body.split("-"):
        m = _LAYER.match(token.strip())
        if m is None or int(m.group(1)) < 1 or (m.group(2) is not None and int(m.group(2)) < 1):
            raise ValueError(f"layer {token.strip()!r} in {spec!r} is neither 'N' (fully connected) nor 'NCk' / 'NCks' (conv)")
        kernel = int(m.group(2)) if m.group(2) else None
        layers.append(LayerSpec(int(m.group(1)), kernel, 2 if m.group(3) else 1))
    m = _FEEDBACK.match(feedback_text.replace(" ", ""))
    if m is None:
        raise ValueError(f"feedback {feedback_text!r} in {spec!r} must be 'FN', 'FNCk' or 'FNCku'")
    feedback = LayerSpec(int(m.group(1)), int(m.group(2)) if m.group(2) else None)
    if feedback.channels != layers[0].channels:
        raise ValueError(f"the feedback of {spec!r} has {feedback.channels} outputs but the first layer has "
                         f"{layers[0].channels}; the feedback must feed the first layer")
    for previous, layer in zip(layers, layers[1:]):
        if previous.is_conv != layer.is_conv:
            raise ValueError(f"{spec!r} mixes fully connected and conv layers; use one kind throughout")
    if feedback.is_conv != layers[0].is_conv:
        raise ValueError(f"the feedback of {spec!r} must be of the same kind (conv or fully connected) as the layers")
    return NetworkSpec(tuple(layers), feedback, bool(m.group(3)))


def build_network(spec: str | NetworkSpec, in_shape: Sequence[int], *, dropout: float = 0.2, batch_norm: bool = True,
                  vth: float = 2.0, spectral_bound: float = 1.0, operator_norm: bool = False,
                  input_padding: Optional[int] = None, bn_momentum: float = 0.1,
                  alpha_init: str = "bound", bn_backward: str = "batch") -> FeedbackSNN:
    """A ``FeedbackSNN`` for ``spec`` on per-sample inputs of ``in_shape`` ((C, H, W) for conv nets).

    ``bn_momentum`` is every batch norm's running-statistics rate; ``bn_backward`` what the
    differentiated f normalises layers 2..N with in training (``FeedbackSNN``); ``alpha_init`` the feedback's
    spectral-norm scale start (see ``SpectralNorm``).
    """
    parsed = parse_spec(spec) if isinstance(spec, str) else spec
    in_shape = tuple(int(s) for s in in_shape)
    first, conv = parsed.layers[0], parsed.layers[0].is_conv
    if conv and len(in_shape) != 3:
        raise ValueError(f"a conv network needs in_shape (C, H, W), got {in_shape}")

    def layer(op: nn.Module) -> SynapticLayer:
        return SynapticLayer(op, batch_norm=batch_norm, dropout=dropout, bn_momentum=bn_momentum)

    if conv:
        padding = (first.kernel - 1) // 2 if input_padding is None else input_padding
        input_layer = layer(nn.Conv2d(in_shape[0], first.channels, first.kernel, first.stride, padding))
    else:
        input_layer = layer(nn.Linear(math.prod(in_shape), first.channels))
    forward_layers = []
    for previous, current in zip(parsed.layers, parsed.layers[1:]):
        if conv:
            op = nn.Conv2d(previous.channels, current.channels, current.kernel, current.stride, (current.kernel - 1) // 2)
        else:
            op = nn.Linear(previous.channels, current.channels)
        forward_layers.append(layer(op))

    # The feedback's input is the last layer; its per-sample shape is needed for the operator norm.
    last_shape = layer_shapes(in_shape, input_layer, forward_layers, flatten_input=not conv)[-1]
    spectral = SpectralNorm(spectral_bound, operator_norm=operator_norm, input_shape=last_shape if conv else None,
                            alpha_init=alpha_init)
    feedback = SynapticLayer(_feedback_op(parsed), dropout=dropout, spectral=spectral)
    return FeedbackSNN(in_shape, input_layer, forward_layers, feedback, vth=vth, flatten_input=not conv,
                       bn_backward=bn_backward)


def _feedback_op(parsed: NetworkSpec) -> nn.Module:
    """The feedback operation W¹ (last layer → first), without bias."""
    last, fb = parsed.layers[-1], parsed.feedback
    if fb.kernel is None:
        return nn.Linear(last.channels, fb.channels, bias=False)
    if parsed.upsample:
        return nn.ConvTranspose2d(last.channels, fb.channels, fb.kernel, 2, (fb.kernel - 1) // 2, output_padding=1, bias=False)
    return nn.Conv2d(last.channels, fb.channels, fb.kernel, 1, (fb.kernel - 1) // 2, bias=False)


def from_spec(spec: str, in_shape: Sequence[int], num_classes: int, *, dropout: float = 0.2, batch_norm: bool = True,
              vth: float = 2.0, spectral_bound: float = 1.0, operator_norm: bool = False,
              input_padding: Optional[int] = None, bn_momentum: float = 0.1, alpha_init: str = "bound",
              bn_backward: str = "batch", **model_options: Any) -> ImplicitClassifier:
    """An ``ImplicitClassifier`` on the network described by ``spec``.

    ``model_options`` go to ``ImplicitClassifier`` (``producer``, ``producer_options``,
    ``b_solver``, ``b_max_iter``, ``b_tol``, ``b_stop_mode``, ``b_options``, and the
    training ``method`` with BPTT's ``surrogate``, ``surrogate_slope``, ``detach_reset``).
    """
    network = build_network(spec, in_shape, dropout=dropout, batch_norm=batch_norm, vth=vth,
                            spectral_bound=spectral_bound, operator_norm=operator_norm, input_padding=input_padding,
                            bn_momentum=bn_momentum, alpha_init=alpha_init, bn_backward=bn_backward)
    return ImplicitClassifier(network, num_classes, **model_options)
