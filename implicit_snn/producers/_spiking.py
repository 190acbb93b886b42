"""The spiking producers: simulate the feedback SNN for T steps and return its average rates."""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import torch

from .. import interrupt
from ..neurons import fire_unleaked_, rate_weights
from ..precision import check_precision, product_dtype, resolve_precision
from ..simulation import SpikingNetwork, averaged_input, count_statistics, feedback_adder, sample_chunks
from ._base import Equilibrium, Producer

RECORD = ("none", "rates", "spikes")


@dataclasses.dataclass(frozen=True)
class _Simulation(Producer):
    """Shared by ``if`` and ``lif``: the discrete-time simulation of supplement Eq. (20)/(23)."""

    time_steps: int = 30
    vth: float | None = None
    record: str = "none"
    sim_precision: str = "fp32"

    # ``leak`` (λ) comes from the subclass: a constant 1.0 for IF, an option for LIF.

    def __post_init__(self) -> None:
        if isinstance(self.time_steps, bool) or not isinstance(self.time_steps, int) or self.time_steps < 1:
            raise ValueError(f"`time_steps` must be an int >= 1, got {self.time_steps!r}")
        if self.vth is not None and not self.vth > 0:
            raise ValueError(f"`vth` must be > 0 (or None for the network's), got {self.vth!r}")
        if self.record not in RECORD:
            raise ValueError(f"`record` must be one of {RECORD}, got {self.record!r}")
        check_precision(self.sim_precision)

    def precision(self, device: torch.device | str) -> str:
        """The precision the simulation runs in on ``device``: ``"fp32"`` or ``"bf16"`` (``"auto"`` resolved)."""
        return resolve_precision(self.sim_precision, device)

    def __call__(self, network: SpikingNetwork, x: torch.Tensor) -> Equilibrium:
        """Simulate ``network`` on ``x`` ([B, *in] constant current, or [B, T', *in] spikes, T' ≥ T)."""
        vth = self.network_vth(network)
        steps, leak = self.time_steps, self.leak
        with torch.no_grad():
            spikes_in, x_bar = averaged_input(network, x, steps, leak)
            f_args = network.map_inputs(x_bar)
            state = f_args[-1]
            constant = None if spikes_in else network.input_drive(x_bar, state)
            low = product_dtype(self.precision(x.device))
            if low is not None:
                if not hasattr(network, "simulation_state"):
                    raise ValueError(f"sim_precision={self.sim_precision!r}: {type(network).__name__} has no "
                                     "simulation_state, so its products cannot run in bf16; use 'fp32'")
                state = network.simulation_state(state, low)  # f_args keep the float32 state
            rates, counts, trains, last = self._simulate(network, x, constant, state, steps, vth, leak, low)
            # Silent and saturated neurons from the integer spike counts (IF's rates are its counts
            # until they are normalised in place below).
            activity = count_statistics(counts if counts is not None else rates, steps)
        normaliser = rate_weights(steps, leak, dtype=torch.float64)[-1].item()  # = 1 / Σ λᵏ
        rates = [r.mul_(normaliser) for r in rates]
        firing = [c / steps for c in counts] if counts is not None else rates
        stats = {
            "time_steps": steps,
            "firing_rate": torch.stack([f.mean() for f in firing]).mean(),
            "firing_rate_per_layer": [f.mean() for f in firing],
            **activity,
        }
        extras: dict[str, Any] = {}
        if self.record != "none":
            extras["rates"] = rates
            extras["firing_rates"] = firing
            # The last step's spikes never reach the feedback (it delivers them one step later).
            extras["last_spikes"] = last
        if trains is not None:
            extras["spikes"] = trains
        return Equilibrium(a=rates[-1], f_args=f_args, stats=stats, extras=extras)

    def network_vth(self, network: SpikingNetwork) -> float:
        """The network's Vth (one host sync, outside any time loop), which this producer's ``vth`` must equal if set."""
        vth = float(network.vth)
        if self.vth is not None and abs(self.vth - vth) > 1e-12:
            raise ValueError(
                f"the producer's vth={self.vth} differs from the network's vth={vth}; the fixed-point map must "
                "describe the simulated network, so set vth on the model instead"
            )
        return vth

    def _simulate(self, network: SpikingNetwork, x: torch.Tensor, constant: Any, state: Any, steps: int,
                  vth: float, leak: float, low: Optional[torch.dtype] = None):
        buffers: Optional[_Buffers] = None
        with_feedback = feedback_adder(network)
        # The samples never mix in the simulation, so on a CPU a large layer runs a chunk of the
        # batch at a time, all T steps: its potentials, rates and spikes then stay in the cache.
        for rows in sample_chunks(network, x.shape[0], x.device):
            part = state if rows is None else network.simulation_rows(state, rows)
            inputs = x if rows is None else x[rows]
            drive = constant if constant is None or rows is None else constant[rows]
            first = drive if drive is not None else network.input_current(inputs[:, 0], part)
            if buffers is None:
                buffers = _Buffers.zeros(network.layer_shapes, x.shape[0], first, steps=steps, counts=leak != 1.0,
                                         trains=self.record == "spikes", low=low)
            self._run(network, inputs, drive, first, part, buffers if rows is None else buffers.rows(rows),
                      steps, vth, leak, with_feedback)
        assert buffers is not None
        return buffers.rates, buffers.counts, buffers.trains, buffers.spikes

    @staticmethod
    def _run(network: SpikingNetwork, x: torch.Tensor, drive: Optional[torch.Tensor], first: torch.Tensor, state: Any,
             buffers: "_Buffers", steps: int, vth: float, leak: float, with_feedback) -> None:
        """All ``steps`` steps of the samples ``buffers`` holds (views of the batch's buffers)."""
        potentials, rates, spikes, products_in = buffers.potentials, buffers.rates, buffers.spikes, buffers.products_in
        counts, trains = buffers.counts, buffers.trains
        cast = products_in is not spikes
        for t in range(steps):
            interrupt.check()  # a stop request ends a long simulation within one step (in training only)
            if t == 0:
                current = first
            else:  # the feedback carries the last layer's spikes of the previous step
                now = drive if drive is not None else network.input_current(x[:, t], state)
                current = with_feedback(now, products_in[-1], state)
            for index in range(len(spikes)):
                if index > 0:
                    current = network.forward_current(index - 1, products_in[index - 1], state)
                fire_unleaked_(potentials[index], current, spikes[index], vth=vth, leak=leak)
                if cast:
                    products_in[index].copy_(spikes[index])
            for index, s in enumerate(spikes):
                if counts is not None:
                    counts[index].add_(s)
                    torch.add(s, rates[index], alpha=leak, out=rates[index])  # λ·rates + s in one pass
                else:
                    rates[index].add_(s)
                if trains is not None:
                    trains[index][:, t] = s


@dataclasses.dataclass(frozen=True)
class _Buffers:
    """A simulation's per-layer state: potentials, rates, spikes, spike counts (LIF) and spike trains
    (when recorded), ``[B, ...]`` each in the currents' dtype; ``products_in`` is what the synaptic
    products read: the spikes themselves, or a copy in the products' lower precision (spikes are 0
    or 1, exact in any dtype; the neuron updates stay in one dtype, where mixed-dtype ones cost a
    conversion pass each)."""

    potentials: list[torch.Tensor]
    rates: list[torch.Tensor]
    spikes: list[torch.Tensor]
    products_in: list[torch.Tensor]
    counts: Optional[list[torch.Tensor]]
    trains: Optional[list[torch.Tensor]]

    @classmethod
    def zeros(cls, layer_shapes, batch: int, like: torch.Tensor, *, steps: int, counts: bool, trains: bool,
              low: Optional[torch.dtype]) -> "_Buffers":
        shapes = [(batch, *shape) for shape in layer_shapes]

        def new(shapes_, dtype=None):
            return [like.new_zeros(shape, dtype=dtype) for shape in shapes_]

        spikes = new(shapes)
        return cls(potentials=new(shapes), rates=new(shapes), spikes=spikes,
                   products_in=spikes if low is None else new(shapes, low),
                   counts=new(shapes) if counts else None,
                   trains=new([(s[0], steps, *s[1:]) for s in shapes]) if trains else None)

    def rows(self, rows: slice) -> "_Buffers":
        """Views of the samples ``rows``."""
        def part(tensors):
            return None if tensors is None else [t[rows] for t in tensors]

        spikes = part(self.spikes)
        return _Buffers(potentials=part(self.potentials), rates=part(self.rates), spikes=spikes,
                        products_in=spikes if self.products_in is self.spikes else part(self.products_in),
                        counts=part(self.counts), trains=part(self.trains))


@dataclasses.dataclass(frozen=True)
class IFProducer(_Simulation):
    """Integrate-and-fire simulation for T steps; the equilibrium is the average firing rate a[T].

    Args:
        time_steps: T.
        vth: must equal the network's threshold if given (the network owns Vth).
        record: ``"rates"`` adds to ``extras`` every layer's rates (``rates``: the equilibrium's
            weighting), spike counts over T (``firing_rates``) and last step's spikes
            (``last_spikes``); ``"spikes"`` also the spike trains ``[B, T, ...]`` per layer.
        sim_precision: ``"fp32"``, ``"bf16"`` (the synaptic products in bfloat16, potentials and
            rates in float32: ``implicit_snn.precision``) or ``"auto"`` (bf16 where the device
            multiplies it natively, else fp32).
    """

    leak = 1.0  # a class constant, not an option: IF has no leak


@dataclasses.dataclass(frozen=True)
class LIFProducer(_Simulation):
    """Leaky integrate-and-fire simulation for T steps; the equilibrium is the λ-weighted average rate.

    Args:
        time_steps: T.
        leak: λ in (0, 1) (0.95 for MNIST-like data, 0.99 for CIFAR in the paper).
        vth: must equal the network's threshold if given (the network owns Vth).
        record, sim_precision: as for ``if``.
    """

    leak: float = 0.95  # type: ignore[assignment]

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (isinstance(self.leak, (int, float)) and 0.0 < self.leak < 1.0):
            raise ValueError(f"`leak` must be in (0, 1) for LIF (use the `if` producer for λ = 1), got {self.leak!r}")
