"""What the spiking producers and BPTT share: the network protocol they simulate, how an input
becomes each step's drive (a held image or a spike train's frames, and the averaged input the
fixed-point map sees), and how the feedback current is added. The neuron step itself is in
``neurons`` (in place for the no-grad simulation, out of place for BPTT's autograd step)."""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Protocol

import torch

from .neurons import time_average


class SpikingNetwork(Protocol):
    """What a network offers the spiking producers (``implicit_snn.FeedbackSNN`` does)."""

    vth: torch.Tensor
    layer_shapes: tuple[tuple[int, ...], ...]  # per-sample shapes of layers 1..N

    def is_spike_train(self, x: torch.Tensor) -> bool: ...

    def map_inputs(self, x_bar: torch.Tensor) -> tuple[torch.Tensor, Any]: ...

    def input_current(self, x_t: torch.Tensor, state: Any) -> torch.Tensor: ...

    def input_drive(self, x_bar: torch.Tensor, state: Any) -> torch.Tensor: ...

    def forward_current(self, index: int, spikes: torch.Tensor, state: Any) -> torch.Tensor: ...

    def feedback_current(self, spikes: torch.Tensor, state: Any) -> torch.Tensor: ...

    # Optional: ``add_feedback_current(drive, spikes, state)`` = drive + feedback_current(spikes, state),
    # fused where the network can (one product-and-add instead of three passes); and
    # ``simulation_rows(state, rows)``, the state for the samples ``rows`` alone, which a network
    # whose simulation never mixes samples offers so that a CPU may simulate its batch in chunks.


def averaged_input(network: SpikingNetwork, x: torch.Tensor, steps: int, leak: float) -> tuple[bool, torch.Tensor]:
    """Whether ``x`` is a spike train ``[B, T', ...]`` (T' ≥ ``steps``, else an error), and the input x̄
    the fixed-point map sees: the (λ-weighted) average of its first ``steps`` frames, or ``x`` itself."""
    spikes_in = network.is_spike_train(x)
    if spikes_in and x.shape[1] < steps:
        raise ValueError(f"the spike train has {x.shape[1]} steps, fewer than time_steps={steps}")
    return spikes_in, (time_average(x[:, :steps], leak) if spikes_in else x)


def feedback_adder(network: SpikingNetwork) -> Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]:
    """``(drive, spikes, state) -> drive + feedback_current(spikes, state)``: the network's fused
    ``add_feedback_current`` where it has one, else the plain sum."""
    fused = getattr(network, "add_feedback_current", None)
    if fused is not None:
        return fused
    return lambda drive, spikes, state: drive + network.feedback_current(spikes, state)


def count_statistics(counts: list[torch.Tensor], steps: int) -> dict[str, list[torch.Tensor]]:
    """Per layer, from its spike counts over the ``steps`` time steps (``[B, *shape]``, integers in
    any float dtype), the fraction of (sample, neuron) pairs that never fired (``silent_per_layer``)
    and that fired at every step (``saturated_per_layer``), as 0-dim float32 tensors: the
    definitions of ``implicit_snn.analysis.layer_activity``, for one batch. Two reductions per
    layer after the time loop, no host sync."""
    silent = [(c == 0).float().mean() for c in counts]
    saturated = [(c == steps).float().mean() for c in counts]
    return {"silent_per_layer": silent, "saturated_per_layer": saturated}


#: On a CPU the simulation of a network with large layers runs the batch in chunks whose state
#: (about BYTES_PER_NEURON per neuron: potential, rate, count, spikes, drive, mask, current) fits in
#: CHUNK_BYTES, a cache most CPUs have, and of at least MIN_CHUNK samples, so that the products
#: stay large. A small gain, within the run-to-run spread of a whole step: F64C5's forward at
#: T = 30, with the single-dtype neuron updates, 0.99–1.13× as fast as before on this project's
#: CPU (bench/results/step-cpu-f64c5-vs-f485efd.json); the results are the same, bit for bit.
CHUNK_BYTES = 8 << 20
BYTES_PER_NEURON = 32
MIN_CHUNK = 16


def sample_chunks(network: SpikingNetwork, batch: int, device: torch.device | str) -> list[Optional[slice]]:
    """The chunks of the batch to simulate one after another: ``[None]`` (the whole batch at once)
    unless ``device`` is a CPU, the network offers ``simulation_rows`` and a chunk of the size
    above holds fewer samples than the batch; then near-equal slices."""
    if torch.device(device).type != "cpu" or not hasattr(network, "simulation_rows"):
        return [None]
    neurons = sum(math.prod(shape) for shape in network.layer_shapes)
    size = max(MIN_CHUNK, CHUNK_BYTES // (BYTES_PER_NEURON * max(neurons, 1)))
    if size >= batch:
        return [None]
    count = math.ceil(batch / size)
    size = math.ceil(batch / count)
    return [slice(start, min(start + size, batch)) for start in range(0, batch, size)]

