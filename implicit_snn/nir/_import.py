"""A NIR graph as a PyTorch model that replays it for T steps: ours, or another tool's recurrent graph."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from ._export import DEFAULT_DT, ENCODING, check_connected
from ._nodes import require_nir, step_module


def read_graph(path: Union[str, os.PathLike]) -> Any:
    """``nir.read`` with one-line errors for a missing file or one that is not NIR."""
    nir = require_nir()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no NIR file at {path}")
    try:
        return nir.read(str(path))
    except Exception as error:  # h5py raises OSError, a foreign HDF5 file KeyError: all mean "not NIR"
        raise ValueError(f"{path} is not a NIR graph ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})") \
            from None


def from_nir(graph: Any, *, time_steps: Optional[int] = None, dt: Optional[float] = None,
             dtype: torch.dtype = torch.float32) -> "NIRModel":
    """A model that replays ``graph`` (a ``nir.NIRGraph`` or a path to a .nir file).

    Graphs written by ``to_nir`` carry their T, dt and threshold rule (``≥``) in their metadata,
    and replay to the exported model's logits. Other graphs (e.g. snnTorch's RLeaky export)
    need ``time_steps``, and ``dt`` unless their metadata has one (default 1e-4, snnTorch's);
    their neurons follow NIR's definitions: forward Euler, spike where v > threshold, v reset
    to ``v_reset`` (not by subtraction).
    """
    if isinstance(graph, (str, os.PathLike)):
        graph = read_graph(graph)
    return NIRModel(graph, time_steps=time_steps, dt=dt, dtype=dtype)


class NIRModel(nn.Module):
    """Replays a NIR graph step by step: ``model(x)`` is the graph's output after T steps.

    Edges are taken in an order found by a depth-first walk from the input: an edge into a node
    still on the walk's path closes a cycle and delivers the previous step's output (zero at the
    first step), as the reset and feedback edges of a recurrent graph do; the others deliver
    this step's. Several edges into one node add up.
    """

    def __init__(self, graph: Any, *, time_steps: Optional[int] = None, dt: Optional[float] = None,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        check_connected(graph)
        metadata = dict(getattr(graph, "metadata", {}) or {})
        ours = str(metadata.get("encoding", "")) == ENCODING
        self.time_steps = int(time_steps if time_steps is not None else metadata.get("time_steps", 0)) or None
        if self.time_steps is None:
            raise ValueError("the graph does not say how many steps to run (no time_steps in its metadata): pass "
                             "time_steps")
        self.dt = float(dt if dt is not None else metadata.get("dt", DEFAULT_DT))
        self.inputs = [n for n, node in graph.nodes.items() if type(node).__name__ == "Input"]
        self.outputs = [n for n, node in graph.nodes.items() if type(node).__name__ == "Output"]
        if len(self.inputs) != 1 or len(self.outputs) != 1:
            raise ValueError(f"a replayable graph has one Input and one Output node, this one {len(self.inputs)} and "
                             f"{len(self.outputs)}")
        node = graph.nodes[self.inputs[0]]
        self.in_shape = tuple(int(s) for s in node.input_type["input"])
        self.steps = nn.ModuleDict({_key(name): step_module(node, dt=self.dt, dtype=dtype, at_equality=ours, name=name)
                                    for name, node in graph.nodes.items()})
        self.order, self.delayed = _schedule(list(graph.nodes), list(graph.edges), self.inputs[0])
        self.sources = {name: [s for s, t in graph.edges if t == name] for name in graph.nodes}
        self.metadata = metadata

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The output after T steps for ``x``: ``[B, *in]`` held constant, or ``[B, T', *in]`` frames (T' ≥ T)."""
        return self.run(x)[0]

    def run(self, x: torch.Tensor, record: tuple[str, ...] = ()) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The output after T steps, and the outputs of the nodes named in ``record`` at every step ``[B, T, ...]``."""
        frames = self._frames(x)
        outputs: dict[str, torch.Tensor] = {}
        states: dict[str, Any] = {}
        trace: dict[str, list[torch.Tensor]] = {name: [] for name in record}
        for t in range(self.time_steps):
            previous, outputs = outputs, {}
            for name in self.order:
                if name == self.inputs[0]:
                    value = frames(t)
                else:
                    parts = [previous.get(s) if (s, name) in self.delayed else outputs[s] for s in self.sources[name]]
                    parts = [p for p in parts if p is not None]  # a delayed edge delivers nothing at t = 0
                    value = parts[0] if len(parts) == 1 else torch.stack(torch.broadcast_tensors(*parts)).sum(0)
                outputs[name], states[name] = self.steps[_key(name)](value, states.get(name))
                if name in trace:
                    trace[name].append(outputs[name])
        return outputs[self.outputs[0]], {name: torch.stack(values, dim=1) for name, values in trace.items()}

    def _frames(self, x: torch.Tensor):
        if tuple(x.shape[1:]) == self.in_shape:
            return lambda t: x
        if x.dim() == len(self.in_shape) + 2 and tuple(x.shape[2:]) == self.in_shape:
            if x.shape[1] < self.time_steps:
                raise ValueError(f"the spike train has {x.shape[1]} steps, fewer than time_steps={self.time_steps}")
            return lambda t: x[:, t]
        raise ValueError(f"input shape {tuple(x.shape)} fits neither [B, {', '.join(map(str, self.in_shape))}] nor "
                         f"[B, T, {', '.join(map(str, self.in_shape))}]")


def _key(name: str) -> str:
    """A ModuleDict key for a node name (no dots)."""
    return name.replace(".", "·")


def _schedule(nodes: list[str], edges: list[tuple[str, str]], start: str) -> tuple[list[str], set[tuple[str, str]]]:
    """(an evaluation order, the edges that close a cycle): depth-first from ``start``."""
    successors = {name: [t for s, t in edges if s == name] for name in nodes}
    delayed: set[tuple[str, str]] = set()
    finished: list[str] = []
    on_path: set[str] = set()
    seen: set[str] = set()

    def visit(name: str) -> None:
        seen.add(name)
        on_path.add(name)
        for nxt in successors[name]:
            if nxt in on_path:
                delayed.add((name, nxt))
            elif nxt not in seen:
                visit(nxt)
        on_path.discard(name)
        finished.append(name)

    visit(start)
    return finished[::-1], delayed
