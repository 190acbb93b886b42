"""Per-layer spiking activity: every neuron's spike count over T steps, gathered over samples.

A ``SpikeCensus`` holds what one pass of the spiking producer over some batches shows, reduced
as it goes (no per-sample tensors are kept, so the whole test set fits): per neuron the total
spikes and the number of samples in which it never fired or fired at every step, per layer the
histogram of spike counts 0..T, the spikes that reached the feedback (a spike of the last step
is delivered one step later, after the simulation ends), and the input's events when the input
is a spike train. ``layer_activity`` turns it into the numbers a researcher checks first when a
multi-layer model trains badly; ``implicit_snn.analysis.energy_report`` into synaptic operations.

Firing rate here means spikes per step (count / T), for LIF too: not the λ-weighted rate the
LIF producer hands to the read-out.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Optional

import torch

from ..classifier import ImplicitClassifier
from ..producers import Equilibrium
from ._common import preserved


@dataclasses.dataclass
class SpikeCensus:
    """Spike counts of a spiking producer's simulation, accumulated over samples (see the module docstring).

    Attributes:
        time_steps: T.
        samples: samples counted.
        layer_shapes: per-sample shapes of layers 1..N.
        spikes: per layer ``[*shape]`` float64, spikes of each neuron summed over samples and steps.
        silent: per layer ``[*shape]``, samples in which the neuron fired no spike.
        saturated: per layer ``[*shape]``, samples in which it fired at every one of the T steps.
        histogram: per layer ``[T + 1]``, (sample, neuron) pairs with 0, 1, …, T spikes.
        feedback_spikes: ``[*layer_shapes[-1]]``, the last layer's spikes the feedback delivered
            (all but the last step's).
        input_events: ``[*in_shape]`` summed input events for a spike-train input, else None.
    """

    time_steps: int
    samples: int
    layer_shapes: tuple[tuple[int, ...], ...]
    spikes: list[torch.Tensor]
    silent: list[torch.Tensor]
    saturated: list[torch.Tensor]
    histogram: list[torch.Tensor]
    feedback_spikes: torch.Tensor
    input_events: Optional[torch.Tensor] = None

    @classmethod
    def empty(cls, time_steps: int, layer_shapes: tuple[tuple[int, ...], ...]) -> "SpikeCensus":
        """A census with nothing counted yet."""
        zeros = [torch.zeros(shape, dtype=torch.float64) for shape in layer_shapes]
        return cls(time_steps=int(time_steps), samples=0, layer_shapes=tuple(layer_shapes),
                   spikes=zeros, silent=[z.clone() for z in zeros], saturated=[z.clone() for z in zeros],
                   histogram=[torch.zeros(time_steps + 1, dtype=torch.float64) for _ in layer_shapes],
                   feedback_spikes=zeros[-1].clone())

    def add(self, eq: Equilibrium, x: torch.Tensor, spike_input: bool) -> None:
        """Count one batch: ``eq`` from a producer with ``record="rates"`` (or ``"spikes"``) on inputs ``x``."""
        if "firing_rates" not in eq.extras or "last_spikes" not in eq.extras:
            raise ValueError("counting spikes needs the producer's record='rates' (its firing_rates and last_spikes)")
        steps = self.time_steps
        for index, firing in enumerate(eq.extras["firing_rates"]):
            # firing is count / T; rounding recovers the integer counts exactly.
            counts = torch.round(firing.detach().double().cpu() * steps)
            self.spikes[index] += counts.sum(0)
            self.silent[index] += (counts == 0).sum(0)
            self.saturated[index] += (counts == steps).sum(0)
            self.histogram[index] += torch.bincount(counts.flatten().long(), minlength=steps + 1)[:steps + 1]
            if index == len(self.layer_shapes) - 1:
                last = eq.extras["last_spikes"][index].detach().double().cpu()
                self.feedback_spikes += (counts - last).sum(0)
        if spike_input:
            events = x[:, :steps].detach().double().abs().cpu().sum(dim=(0, 1))
            self.input_events = events if self.input_events is None else self.input_events + events
        self.samples += int(x.shape[0])


def recording(model: ImplicitClassifier) -> Any:
    """The model's spiking producer with ``record="rates"``: the per-layer counts a census needs."""
    producer = model.producer
    if not hasattr(producer, "time_steps") or not hasattr(producer, "record"):
        raise ValueError(f"counting spikes needs a spiking producer (if, lif), the model has {type(producer).__name__}")
    if producer.record != "none":
        return producer
    return dataclasses.replace(producer, record="rates")


@torch.no_grad()
def spike_census(model: ImplicitClassifier, batches: Iterable[tuple[torch.Tensor, Any]]) -> SpikeCensus:
    """Simulate ``model`` (eval mode, its producer) on each batch's inputs and count every neuron's spikes.

    ``batches`` yields ``(x, y)`` pairs (``y`` is not used). The model is left as it was.
    """
    network = model.network
    with preserved(model):
        model.eval()
        producer = recording(model)
        census = SpikeCensus.empty(producer.time_steps, network.layer_shapes)
        for x, _ in batches:
            census.add(producer(network, x), x, network.is_spike_train(x))
    if census.samples == 0:
        raise ValueError("counting spikes needs at least one sample in `batches`")
    return census


@dataclasses.dataclass(frozen=True)
class LayerActivity:
    """One spiking layer's activity over the counted samples.

    Attributes:
        layer: its number, 1..N.
        shape: per-sample shape.
        neurons: neurons in the layer.
        firing_rate: mean spikes per neuron per step.
        silent: fraction of (sample, neuron) pairs without a spike.
        saturated: fraction of (sample, neuron) pairs with a spike at every step.
        never_firing: fraction of neurons silent on every sample (dead neurons).
        always_saturated: fraction of neurons saturated on every sample.
        spikes_per_sample: spikes of the whole layer per sample, over the T steps.
        histogram: fraction of (sample, neuron) pairs with 0, 1, …, T spikes (sums to 1).
    """

    layer: int
    shape: tuple[int, ...]
    neurons: int
    firing_rate: float
    silent: float
    saturated: float
    never_firing: float
    always_saturated: float
    spikes_per_sample: float
    histogram: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        """Plain numbers for JSON; the histogram as the spike counts 0..T and their fractions."""
        values = dataclasses.asdict(self)
        values["shape"] = list(self.shape)
        values["histogram"] = {"spike_counts": list(range(len(self.histogram))), "fraction": list(self.histogram)}
        return values


def layer_activity(census: SpikeCensus) -> list[LayerActivity]:
    """Each layer's mean firing rate, silent and saturated fractions and spike-count histogram."""
    rows = []
    n, steps = census.samples, census.time_steps
    for index, shape in enumerate(census.layer_shapes):
        neurons = census.spikes[index].numel()
        pairs = n * neurons
        rows.append(LayerActivity(
            layer=index + 1, shape=tuple(shape), neurons=neurons,
            firing_rate=float(census.spikes[index].sum()) / (pairs * steps),
            silent=float(census.silent[index].sum()) / pairs,
            saturated=float(census.saturated[index].sum()) / pairs,
            never_firing=float((census.silent[index] == n).double().mean()),
            always_saturated=float((census.saturated[index] == n).double().mean()),
            spikes_per_sample=float(census.spikes[index].sum()) / n,
            histogram=tuple(float(v) / pairs for v in census.histogram[index]),
        ))
    return rows
