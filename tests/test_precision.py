"""The simulation in bfloat16 (``sim_precision``): bf16 products, float32 potentials, auto detection."""

import json

import pytest
import torch

import implicit_snn.producers._spiking as spiking
import models
from implicit_snn import precision
from implicit_snn.app.cli import main
from implicit_snn.producers import get_producer
from tests.helpers import SMALL, cli_error

DYADIC = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0])  # exact in bfloat16, and so are small sums of them


def dyadic_network(seed=0):
    """A two-layer feedback SNN whose synaptic products are exact in bfloat16: spikes times weights
    from DYADIC, no bias, no spectral scaling; the constant input current is any float32 value."""
    torch.manual_seed(seed)
    model = models.from_spec("12-8 (F12)", (6,), 3, dropout=0.0, producer="lif")
    network = model.network
    network.feedback.spectral = None  # the weight as set, not rescaled by α/σ
    with torch.no_grad():
        for layer in (*network.forward_layers, network.feedback):
            layer.op.weight.copy_(DYADIC[torch.randint(0, 5, layer.op.weight.shape)])
            if layer.op.bias is not None:
                layer.op.bias.zero_()
        model.train()(torch.randn(64, 6))  # running statistics for eval mode
    return model.eval()


def simulate(model, x, sim_precision, steps=60):
    producer = get_producer("lif", time_steps=steps, leak=0.95, record="spikes", sim_precision=sim_precision)
    with torch.no_grad():
        return producer(model.network, x)


def test_bf16_spikes_equal_float32_spikes_where_the_currents_are_exact():
    model = dyadic_network()
    x = torch.randn(16, 6)  # input currents with every float32 digit: held in float32 potentials
    exact, low = simulate(model, x, "fp32"), simulate(model, x, "bf16")
    for a, b in zip(exact.extras["spikes"], low.extras["spikes"]):
        assert torch.equal(a, b)
    assert float(sum(s.sum() for s in exact.extras["spikes"])) > 100  # the network is not silent
    assert torch.equal(exact.a, low.a) and low.a.dtype == torch.float32
    assert low.f_args[-1].products is None  # f (and its adjoint) keep the float32 state


def test_potentials_accumulated_in_bf16_would_change_the_spikes():
    """The check above can fail: potentials rounded to bfloat16 after every step move spike times."""
    model = dyadic_network()
    x = torch.randn(16, 6)
    exact = simulate(model, x, "fp32")
    original = spiking.fire_unleaked_

    def in_bf16(potential, current, spikes, *, vth, leak):
        out = original(potential, current, spikes, vth=vth, leak=leak)
        potential.copy_(potential.to(torch.bfloat16))  # the deliberate bug: potentials held in bf16
        return out

    spiking.fire_unleaked_ = in_bf16
    try:
        rounded = simulate(model, x, "bf16")
    finally:
        spiking.fire_unleaked_ = original
    assert any(not torch.equal(a, b) for a, b in zip(exact.extras["spikes"], rounded.extras["spikes"]))


def test_a_trained_shape_network_in_bf16_stays_close_to_float32():
    """Generic weights (rounded to bf16, outputs rounded): the rates move a little, not the decision."""
    torch.manual_seed(1)
    model = models.build_model("f400", producer_options=dict(time_steps=30)).eval()
    x = torch.rand(64, 1, 28, 28)
    exact, low = simulate(model, x, "fp32", 30), simulate(model, x, "bf16", 30)
    assert 0 < float((exact.a - low.a).abs().max()) < 0.2
    assert float((exact.a - low.a).abs().mean()) < 0.01


@pytest.mark.parametrize("spec, in_shape", [("12 (F12)", (6,)), ("3C3 (F3C3)", (1, 6, 6))])
@pytest.mark.parametrize("dropout", [0.0, 0.2, 0.3])
def test_the_fused_bf16_feedback_current_is_cast_mask_and_add(spec, in_shape, dropout):
    """The simulation adds the bf16 feedback product times the dropout mask to the drive in one
    pass (one rounding where the mask scale makes the product inexact). Exactly the cast-mask-add
    where the masked product is exact in float32 (no dropout, or 1/(1 − p) = 1.25 as in F400), else
    within one float32 rounding of it."""
    torch.manual_seed(3)
    network = models.from_spec(spec, in_shape, 3, dropout=dropout, producer="lif").network.train()
    _, state = network.map_inputs(torch.rand(9, *in_shape))
    state = network.simulation_state(state, torch.bfloat16)
    assert (state.feedback_mask is not None) == (dropout > 0)
    spikes = (torch.rand(9, *network.layer_shapes[-1]) < 0.4).bfloat16()
    drive = torch.randn(9, *network.layer_shapes[0]) * 3
    fused = network.add_feedback_current(drive, spikes, state)
    unfused = drive + network.feedback_current(spikes, state)
    assert fused.dtype == torch.float32
    if dropout in (0.0, 0.2):
        assert torch.equal(fused, unfused)
    else:
        ulp = torch.finfo(torch.float32).eps * unfused.abs().clamp_min(1.0)
        assert bool(((fused - unfused).abs() <= ulp).all())


@pytest.mark.parametrize("method", ["ide", "bptt"])
def test_training_step_gradients_in_bf16_are_close_to_float32(method):
    def gradient(sim_precision):
        torch.manual_seed(0)
        model = models.build_model("16C3s-32C3s (F16C3u)", 10, in_shape=(1, 28, 28), method=method,
                                   producer_options=dict(time_steps=5, sim_precision=sim_precision)).train()
        x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
        torch.nn.functional.cross_entropy(model(x), y).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    exact, low = gradient("fp32"), gradient("bf16")
    assert low.dtype == torch.float32 and not torch.equal(exact, low)  # bf16 did run
    assert float(torch.nn.functional.cosine_similarity(exact, low, dim=0)) > 0.99


def test_auto_picks_bf16_only_where_the_cpu_has_it_natively(monkeypatch):
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset({"avx2", "avx512f", "avx512_bf16"}))
    assert precision.resolve_precision("auto", "cpu") == "bf16"
    assert "avx512_bf16" in precision.native_bf16("cpu")[1]
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset({"avx2", "amx_bf16", "amx_tile"}))
    assert precision.resolve_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert precision.resolve_precision("auto", "cpu") == "fp32"
    assert "emulated" in precision.native_bf16("cpu")[1]
    monkeypatch.setattr(precision, "_cpu_flags", lambda: None)
    assert precision.resolve_precision("auto", "cpu") == "fp32"
    assert precision.resolve_precision("bf16", "cpu") == "bf16" and precision.resolve_precision("fp32", "cpu") == "fp32"
    with pytest.raises(ValueError, match=r"`sim_precision` must be one of 'fp32', 'bf16', 'auto', got 'fp16'"):
        precision.resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="`sim_precision` must be one of"):
        get_producer("lif", sim_precision="half")


def test_this_machines_flags_are_read():
    flags = precision._cpu_flags()
    assert flags is None or "fpu" in flags or "fp" in flags  # x86 or ARM flags lines


@pytest.mark.skipif(not precision.native_bf16("cpu")[0], reason="the CPU multiplies bf16 by emulation")
def test_native_bf16_product_equals_rounded_operands_multiplied_in_float32():
    """A native bf16 product accumulates in float32 and rounds its output: what rounding the operands,
    multiplying in float32 and rounding the result computes (to one bf16 unit in the last place,
    for the accumulation order)."""
    torch.manual_seed(0)
    spikes = (torch.rand(128, 400) < 0.2).float()
    weight = torch.randn(400, 400) / 20
    native = torch.nn.functional.linear(spikes.bfloat16(), weight.bfloat16()).float()
    emulated = torch.nn.functional.linear(spikes.bfloat16().float(), weight.bfloat16().float())
    ulp = emulated.abs().clamp_min(1e-30) * 2.0 ** -7
    assert bool(((native - emulated).abs() <= ulp).all())
    assert float((native - emulated.bfloat16().float()).abs().max()) <= float(ulp.max())


def test_the_command_line_records_what_ran(tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset({"avx512_bf16"}))
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "1", "--sim-precision", "auto", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["sim_precision"] == "bf16"
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset({"avx2"}))
    other = tmp_path / "other"
    assert main(["train", *SMALL, "--epochs", "1", "--sim-precision", "auto", "--out", str(other)]) == 0
    assert json.loads((other / "config.json").read_text())["sim_precision"] == "fp32"


def test_bad_precision_on_the_command_line_is_one_line(tmp_path, capsys):
    message = cli_error(["train", *SMALL, "--sim-precision", "fp16", "--out", str(tmp_path / "x")], capsys)
    assert "--sim-precision" in message and "'bf16'" in message
    message = cli_error(["train", *SMALL, "--producer", "analytic", "--sim-precision", "bf16",
                         "--out", str(tmp_path / "y")], capsys)
    assert "sim_precision" in message or "sim-precision" in message
    assert "analytic" in message
