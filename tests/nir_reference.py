"""A node map for ``nirtorch.nir_to_torch`` written from NIR's definitions alone (nir 1.0.8's
docstrings), not from implicit-snn's simulation: the independent replay of exported graphs.

NIR's neurons are continuous-time; like snnTorch and Norse this integrates them by forward
Euler with the graph's dt: LI τ v̇ = (v_leak − v) + R I gives v ← v + dt/τ·(v_leak − v + R I),
I v̇ = R I gives v ← v + dt·R·I. Threshold is a Heaviside step; ``at_equality`` chooses ≥ (the
exported network's rule, recorded in its metadata) or NIR's >. nirtorch's own default Affine
mapping sets ``module.weight.bias`` instead of the bias (nirtorch 2.6), so this map has its own.
"""

from __future__ import annotations

import nir
import torch
from torch import nn


def _t(array, dtype):
    return torch.as_tensor(array, dtype=dtype)


def node_map(dt: float, *, dtype=torch.float64, at_equality: bool = True) -> dict:
    """{nir node type: constructor of a torch module} for every node the exporter writes."""

    class LI(nn.Module):
        def __init__(self, node):
            super().__init__()
            self.tau, self.r, self.v_leak = (_t(a, dtype) for a in (node.tau, node.r, node.v_leak))

        def forward(self, x, state=None):
            v = torch.zeros_like(x) if state is None else state
            v = v + dt / self.tau * (self.v_leak - v + self.r * x)
            return v, v

    class I(nn.Module):  # noqa: E742 (NIR's name)
        def __init__(self, node):
            super().__init__()
            self.r = _t(node.r, dtype)

        def forward(self, x, state=None):
            v = torch.zeros_like(x) if state is None else state
            v = v + dt * self.r * x
            return v, v

    class Threshold(nn.Module):
        def __init__(self, node):
            super().__init__()
            self.threshold = _t(node.threshold, dtype)

        def forward(self, v):
            return (v >= self.threshold if at_equality else v > self.threshold).to(v.dtype)

    class Scale(nn.Module):
        def __init__(self, node):
            super().__init__()
            self.scale = _t(node.scale, dtype)

        def forward(self, x):
            return x * self.scale

    class Affine(nn.Module):
        def __init__(self, node):
            super().__init__()
            self.weight, self.bias = _t(node.weight, dtype), _t(node.bias, dtype)

        def forward(self, x):
            return x @ self.weight.T + self.bias

    class Linear(nn.Module):
        def __init__(self, node):
            super().__init__()
            self.weight = _t(node.weight, dtype)

        def forward(self, x):
            return x @ self.weight.T

    class Conv2d(nn.Module):
        def __init__(self, node):
            super().__init__()
            self.weight, self.bias = _t(node.weight, dtype), _t(node.bias, dtype)
            self.args = (tuple(int(s) for s in node.stride), tuple(int(p) for p in node.padding),
                         tuple(int(d) for d in node.dilation), int(node.groups))

        def forward(self, x):
            return torch.nn.functional.conv2d(x, self.weight, self.bias, *self.args)

    class Flatten(nn.Module):
        def __init__(self, node):  # NIR's dimensions exclude the batch
            super().__init__()
            self.start = int(node.start_dim) + 1

        def forward(self, x):
            return x.flatten(self.start)

    class LIF(nn.Module):
        def __init__(self, node):
            super().__init__()
            self.tau, self.r, self.v_leak, self.v_threshold, self.v_reset = (
                _t(a, dtype) for a in (node.tau, node.r, node.v_leak, node.v_threshold, node.v_reset))

        def forward(self, x, state=None):
            v = torch.zeros_like(x) if state is None else state
            v = v + dt / self.tau * (self.v_leak - v + self.r * x)
            z = (v > self.v_threshold).to(v.dtype)
            return z, torch.where(z > 0, self.v_reset, v)

    class IF(nn.Module):
        def __init__(self, node):
            super().__init__()
            self.r, self.v_threshold, self.v_reset = (_t(a, dtype) for a in (node.r, node.v_threshold, node.v_reset))

        def forward(self, x, state=None):
            v = torch.zeros_like(x) if state is None else state
            v = v + dt * self.r * x
            z = (v > self.v_threshold).to(v.dtype)
            return z, torch.where(z > 0, self.v_reset, v)

    return {nir.LI: LI, nir.I: I, nir.Threshold: Threshold, nir.Scale: Scale, nir.Affine: Affine, nir.Linear: Linear,
            nir.Conv2d: Conv2d, nir.Flatten: Flatten, nir.LIF: LIF, nir.IF: IF}


def replay(graph, x, *, dtype=torch.float64, at_equality=True):
    """The graph run by ``nirtorch.nir_to_torch`` for its T steps on ``x`` (held, or one frame per
    step): (its output after T steps, {threshold node: spikes [B, T, ...]})."""
    import nirtorch

    steps = int(graph.metadata["time_steps"])
    module = nirtorch.nir_to_torch(graph, node_map(float(graph.metadata["dt"]), dtype=dtype, at_equality=at_equality),
                                   dtype=dtype)
    thresholds = [name for name, node in graph.nodes.items() if isinstance(node, (nir.Threshold, nir.LIF, nir.IF))]
    spikes = {name: [] for name in thresholds}
    state = None
    frames = x.dim() == len(graph.nodes["input"].input_type["input"]) + 2
    for t in range(steps):
        out, state = module(x[:, t] if frames else x, state)
        for name in thresholds:
            # nirtorch keeps each node on a cycle's output of this step as ``<name>_prev_output``.
            spikes[name].append(state[f"{name}_prev_output"])
    return out, {name: torch.stack(values, dim=1) for name, values in spikes.items()}
