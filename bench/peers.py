"""The same F400 network, BPTT-trained, written in other ways: the baselines of BPTT's speed.

* ``eager_f400(model)``: a plain eager loop (autograd records every op; the spike function is the
  usual custom Heaviside with a sigmoid surrogate), what a straightforward implementation does;
* ``spikingjelly_f400(model)``: SpikingJelly's ``IFNode``/``LIFNode`` (soft reset, sigmoid
  surrogate) on the same parameters;
* ``snntorch_f400(model)``: snnTorch's ``snn.Leaky`` (subtractive reset, sigmoid surrogate) on the
  same parameters.

Each returns an ``nn.Module`` whose ``forward(x)`` gives the logits of ``model`` (F400, or any
single-layer ``FeedbackSNN`` classifier) for constant input ``x [B, *in_shape]``, simulating the
network as ``implicit_snn.bptt.unroll`` does (u ← u + I; s = [u ≥ Vth]; u ← u − Vth·s; u ← λu;
one-step-delayed feedback; λ-weighted average rate of the last layer into the read-out). The
peers share the model's parameters (the same tensors: gradients land on the model), its dropout
masks (``network.map_inputs``) and its input batch norm (batch statistics with grad, once per
pass). The eager loop and SpikingJelly compute BPTT's logits and gradients (tests/test_bptt.py
holds them to it); snnTorch's neuron differs in details noted below, so it is a peer for speed
only. SpikingJelly and snnTorch are optional (``pip install -e .[bench]``); the library never
imports them, the tests only where installed.
"""

from __future__ import annotations

import torch
from torch import nn


class _HeavisideSigmoid(torch.autograd.Function):
    """s = [x ≥ 0]; ds/dx ≈ slope·σ(slope·x)(1 − σ(slope·x)) (the surrogate of ``bptt``'s ``sigmoid``)."""

    @staticmethod
    def forward(ctx, x, slope):  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.slope = slope
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        sig = torch.sigmoid(ctx.slope * x)
        return grad * ctx.slope * sig * (1 - sig), None


class _F400Base(nn.Module):
    """What the peers share: the model's parameters, its pass state and its read-out."""

    def __init__(self, model: nn.Module, time_steps: int, leak: float, slope: float):
        super().__init__()
        network = model.network
        if len(network.layer_shapes) != 1:
            raise ValueError("the peers implement single-layer networks such as F400")
        self.model = model  # registered: the parameters are the model's own
        self.time_steps, self.leak, self.slope = time_steps, float(leak), float(slope)
        self.vth = float(network.vth)
        weights = leak ** torch.arange(time_steps - 1, -1, -1, dtype=torch.float64)
        self.normaliser = float(1.0 / weights.sum())

    def drive_and_state(self, x: torch.Tensor):
        """F¹x + b¹ with grad (batch statistics in training) and the pass state (masks, W¹ with graph)."""
        network = self.model.network
        with torch.no_grad():
            _, state = network.map_inputs(x)
        _, state = network.differentiable_args(x, state)
        return network.input_drive(x, state), state

    def readout(self, rate: torch.Tensor) -> torch.Tensor:
        """Logits of the λ-weighted rate sum (normalised here, as BPTT normalises after the loop)."""
        return self.model.classifier((rate * self.normaliser).flatten(1))


class EagerF400(_F400Base):
    """The plain eager loop: every op of the dynamics is an autograd node."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        network = self.model.network
        drive, state = self.drive_and_state(x)
        u = torch.zeros_like(drive)
        rate = torch.zeros_like(drive)
        spikes = None
        for t in range(self.time_steps):
            current = drive if t == 0 else drive + network.feedback_current(spikes, state)
            u = u + current
            spikes = _HeavisideSigmoid.apply(u - self.vth, self.slope)
            u = u - self.vth * spikes
            if self.leak != 1.0:
                u = u * self.leak
            rate = rate * self.leak + spikes
        return self.readout(rate)


def eager_f400(model: nn.Module, *, time_steps: int = 5, leak: float = 0.95, slope: float = 4.0) -> nn.Module:
    """F400 as a plain eager BPTT loop on ``model``'s parameters."""
    return EagerF400(model, time_steps, leak, slope)


class SpikingJellyF400(_F400Base):
    """F400 with SpikingJelly's single-step neuron (soft reset by subtraction, sigmoid surrogate)."""

    def __init__(self, model: nn.Module, time_steps: int, leak: float, slope: float, detach_reset: bool):
        super().__init__(model, time_steps, leak, slope)
        from spikingjelly.activation_based import neuron, surrogate

        common = dict(v_threshold=self.vth, v_reset=None, surrogate_function=surrogate.Sigmoid(alpha=slope),
                      detach_reset=detach_reset, step_mode="s")
        if self.leak == 1.0:
            self.node = neuron.IFNode(**common)
        else:
            # decay_input=False: H = (1 − 1/τ)·V + X = λ·V + X with τ = 1/(1 − λ); the leak of the
            # previous step's reset potential, as implicit-snn's u ← λ(u − Vth·s) then u + I.
            self.node = neuron.LIFNode(tau=1.0 / (1.0 - self.leak), decay_input=False, **common)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from spikingjelly.activation_based import functional

        network = self.model.network
        drive, state = self.drive_and_state(x)
        functional.reset_net(self.node)
        rate = None
        spikes = None
        for t in range(self.time_steps):
            current = drive if t == 0 else drive + network.feedback_current(spikes, state)
            spikes = self.node(current)
            rate = spikes if rate is None else rate * self.leak + spikes
        return self.readout(rate)


def spikingjelly_f400(model: nn.Module, *, time_steps: int = 5, leak: float = 0.95, slope: float = 4.0,
                      detach_reset: bool = False) -> nn.Module:
    """F400 in SpikingJelly on ``model``'s parameters (needs ``spikingjelly``)."""
    return SpikingJellyF400(model, time_steps, leak, slope, detach_reset)


class SnnTorchF400(_F400Base):
    """F400 with snnTorch's ``Leaky`` neuron (subtractive reset, sigmoid surrogate)."""

    def __init__(self, model: nn.Module, time_steps: int, leak: float, slope: float, detach_reset: bool):
        super().__init__(model, time_steps, leak, slope)
        import snntorch as snn
        from snntorch import surrogate

        # snnTorch's Leaky: mem = β·mem + I − Vth·[mem_prev > Vth], spk = [mem > Vth], and with
        # reset_delay=False mem ← mem − Vth·spk at once. That is implicit-snn's dynamics except for
        # the strict threshold test and a second subtraction on the next step where the potential
        # after a reset is still above Vth: the same work per step, not the same numbers.
        if detach_reset:
            raise ValueError("the snnTorch peer differentiates the reset; use detach_reset=False")
        self.node = snn.Leaky(beta=self.leak, threshold=self.vth, spike_grad=surrogate.sigmoid(slope=slope),
                              reset_mechanism="subtract", reset_delay=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        network = self.model.network
        drive, state = self.drive_and_state(x)
        mem = self.node.init_leaky()
        rate = None
        spikes = None
        for t in range(self.time_steps):
            current = drive if t == 0 else drive + network.feedback_current(spikes, state)
            spikes, mem = self.node(current, mem)
            spikes = spikes.to(current.dtype)  # snnTorch's spike functions return float32 (a no-op in float32)
            rate = spikes if rate is None else rate * self.leak + spikes
        return self.readout(rate)


def snntorch_f400(model: nn.Module, *, time_steps: int = 5, leak: float = 0.95, slope: float = 4.0,
                  detach_reset: bool = False) -> nn.Module:
    """F400 in snnTorch on ``model``'s parameters (needs ``snntorch``)."""
    return SnnTorchF400(model, time_steps, leak, slope, detach_reset)
