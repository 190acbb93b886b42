"""BPTT: its gradients against a hand-written unrolled reference, its forward against the IDE
simulation, its surrogates, the classifier API and the command line."""

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import models
from implicit_snn import bptt
from implicit_snn.app.cli import main
from implicit_snn.neurons import time_average
from implicit_snn.producers import IFProducer, LIFProducer
from tests.helpers import SMALL, comparable, metrics


# -- surrogates ---------------------------------------------------------------------------


@pytest.mark.parametrize("slope", [0.5, 4.0, 10.0])
def test_sigmoid_surrogate_is_the_derivative_of_sigmoid_slope_x(slope):
    x = torch.linspace(-3, 3, 61, dtype=torch.float64)
    h = 1e-6
    smooth = lambda z: 1.0 / (1.0 + torch.exp(-slope * z))  # written out here, not bptt's
    numeric = (smooth(x + h) - smooth(x - h)) / (2 * h)
    surrogate = bptt.get_surrogate("sigmoid", slope)
    torch.testing.assert_close(surrogate.derivative(x), numeric, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(surrogate.smooth(x), smooth(x), rtol=1e-14, atol=0)
    assert surrogate.derivative(torch.zeros(1, dtype=torch.float64)).item() == pytest.approx(slope / 4, rel=1e-15)


@pytest.mark.parametrize("slope", [0.5, 1.0, 4.0])
def test_rectangular_surrogate_is_a_unit_area_box_of_height_slope(slope):
    width = 1.0 / slope
    x = torch.linspace(-2 * width, 2 * width, 81, dtype=torch.float64)[1::2]  # never exactly on an edge
    h = 1e-7
    smooth = lambda z: torch.clamp(slope * z + 0.5, 0, 1)
    numeric = (smooth(x + h) - smooth(x - h)) / (2 * h)
    derivative = bptt.get_surrogate("rectangular", slope).derivative(x)
    torch.testing.assert_close(derivative, numeric, rtol=1e-6, atol=1e-9)
    expected = torch.where(x.abs() < width / 2, slope, 0.0).to(torch.float64)
    assert torch.equal(derivative, expected)
    # Open edges, and unit area: the box integrates to the step's jump of 1.
    edges = torch.tensor([-width / 2, width / 2], dtype=torch.float64)
    assert bptt.get_surrogate("rectangular", slope).derivative(edges).tolist() == [0.0, 0.0]
    fine = torch.linspace(-width, width, 200001, dtype=torch.float64)
    area = torch.trapezoid(bptt.get_surrogate("rectangular", slope).derivative(fine), fine).item()
    assert area == pytest.approx(1.0, abs=1e-3)


def test_surrogate_defaults_and_bad_values_are_one_line_errors():
    assert bptt.get_surrogate().slope == 4.0 and bptt.get_surrogate("rectangular").slope == 1.0
    assert bptt.available_surrogates() == ["rectangular", "sigmoid"]
    with pytest.raises(ValueError, match=r"^unknown surrogate 'tanh'; choose one of rectangular, sigmoid$"):
        bptt.get_surrogate("tanh")
    for slope in (0.0, -1.0, math.inf, math.nan, True):
        with pytest.raises(ValueError, match=r"^surrogate slope must be a finite number > 0, got"):
            bptt.get_surrogate("sigmoid", slope)


# -- an independent unrolled reference ------------------------------------------------------


def _op(op, x, weight=None):
    weight = op.weight if weight is None else weight
    if isinstance(op, nn.Linear):
        return x @ weight.t() + (op.bias if op.bias is not None else 0.0)
    return F.conv2d(x, weight, op.bias, op.stride, op.padding)


def _channels(t, like):
    return t.view(1, -1, *([1] * (like.dim() - 2)))


def _normalize(z, bn, mean, var):
    return (z - _channels(mean, z)) / torch.sqrt(_channels(var, z) + bn.eps) * _channels(bn.weight, z) \
        + _channels(bn.bias, z)


def _batch_stats(z):
    dims = [0] + list(range(2, z.dim()))
    mean = z.mean(dims)
    centred = z - _channels(mean, z)
    var = (centred * centred).mean(dims)
    n = z.numel() // z.shape[1]
    return mean, var, var.detach() * n / (n - 1)


def reference_unroll(model, x, masks, u0, *, time_steps, leak, smooth, detach_reset, spike_train):
    """The BPTT forward of a FeedbackSNN in plain ops; spikes are [x ≥ 0] with the derivative of ``smooth``.

    Returns the read-out logits and the running statistics the pass should leave (per BN layer).
    """
    net = model.network
    vth = float(net.vth)
    training = net.training
    input_mask, forward_masks, feedback_mask = masks

    def spike(v):
        step = (v >= 0).to(v.dtype)
        g = smooth(v)
        return step + (g - g.detach())  # value: the step; gradient: the surrogate

    # W_eff = α W / σ(W), σ = uᵀ W v after one power-iteration step from u0 in training.
    fb = net.feedback
    weight = fb.op.weight
    mat = weight.reshape(weight.shape[0], -1)
    with torch.no_grad():
        u = u0
        if training:
            v = F.normalize(mat.t() @ u, dim=0)
            u = F.normalize(mat @ v, dim=0)
        else:
            v = fb.spectral.v
    alpha = fb.spectral.alpha.clamp(-fb.spectral.bound, fb.spectral.bound)
    w_eff = weight * (alpha / torch.dot(u, mat @ v))

    expected_running = {}
    flat = (lambda z: z.flatten(1)) if net.flatten_input else (lambda z: z)
    in_bn = net.input_layer.bn
    if spike_train:
        weights = leak ** torch.arange(time_steps - 1, -1, -1, dtype=x.dtype)
        x_bar = torch.einsum("bt...,t->b...", x[:, :time_steps], weights / weights.sum())
        zs = [_op(net.input_layer.op, flat(x[:, t])) for t in range(time_steps)]
        if training:
            mean, var, unbiased = _batch_stats(_op(net.input_layer.op, flat(x_bar)))
            expected_running["input"] = (mean.detach(), unbiased)
        else:
            mean, var = in_bn.running_mean, in_bn.running_var
        drives = [_normalize(z, in_bn, mean, var) for z in zs]
    else:
        z = _op(net.input_layer.op, flat(x))
        if training:
            mean, var, unbiased = _batch_stats(z)
            expected_running["input"] = (mean.detach(), unbiased)
        else:
            mean, var = in_bn.running_mean, in_bn.running_var
        drives = [_normalize(z, in_bn, mean, var)] * time_steps
    if input_mask is not None:
        drives = [d * input_mask for d in drives]

    n_layers = 1 + len(net.forward_layers)
    u_mem = [0.0] * n_layers
    s = [None] * n_layers
    readout = []
    step_stats = [[] for _ in net.forward_layers]
    for t in range(time_steps):
        current = drives[t]
        if t > 0:
            feedback = _op(fb.op, s[-1], w_eff) if isinstance(fb.op, nn.Linear) else \
                F.conv2d(s[-1], w_eff, None, fb.op.stride, fb.op.padding)
            current = current + (feedback * feedback_mask if feedback_mask is not None else feedback)
        for index in range(n_layers):
            if index > 0:
                layer = net.forward_layers[index - 1]
                z = _op(layer.op, s[index - 1])
                if training:
                    mean, var, unbiased = _batch_stats(z)
                    step_stats[index - 1].append((mean.detach(), unbiased))
                else:
                    mean, var = layer.bn.running_mean, layer.bn.running_var
                current = _normalize(z, layer.bn, mean, var)
                if forward_masks[index - 1] is not None:
                    current = current * forward_masks[index - 1]
            u_mem[index] = u_mem[index] + current
            s[index] = spike(u_mem[index] - vth)
            reset = s[index].detach() if detach_reset else s[index]
            u_mem[index] = leak * (u_mem[index] - vth * reset)
        readout.append(s[-1])
    weights = leak ** torch.arange(time_steps - 1, -1, -1, dtype=x.dtype)
    rate = sum(w * r for w, r in zip(weights / weights.sum(), readout))
    for index, stats in enumerate(step_stats):
        expected_running[index] = (sum(m for m, _ in stats) / time_steps, sum(v for _, v in stats) / time_steps)
    return model.classifier(rate.flatten(1)), rate, expected_running


SPECS = {  # spec, per-sample input shape
    "fc": ("6 (F6)", (1, 4, 4)),
    "fc2": ("5-4 (F5)", (4,)),
    "conv": ("3C3 (F3C3)", (1, 6, 6)),
}


def tiny_model(spec_name, producer, *, seed=0, time_steps=6, leak=0.9, surrogate="sigmoid", slope=None,
               detach_reset=False):
    spec, in_shape = SPECS[spec_name]
    torch.manual_seed(seed)
    options = dict(time_steps=time_steps, leak=leak) if producer == "lif" else dict(time_steps=time_steps)
    model = models.from_spec(spec, in_shape, 3, dropout=0.25, producer=producer, producer_options=options,
                             method="bptt", surrogate=surrogate, surrogate_slope=slope,
                             detach_reset=detach_reset).double()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):  # non-trivial affine and running statistics
                module.weight.copy_(torch.rand(module.weight.shape, generator=gen, dtype=torch.float64) + 0.5)
                module.bias.copy_(0.3 * torch.randn(module.bias.shape, generator=gen, dtype=torch.float64))
                module.running_mean.copy_(0.2 * torch.randn(module.running_mean.shape, generator=gen, dtype=torch.float64))
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=gen, dtype=torch.float64) + 0.5)
        model.network.feedback.spectral.alpha.fill_(0.7)  # inside the clip: clamp and min/max agree
        for layer in [model.network.input_layer, *model.network.forward_layers]:
            layer.op.bias.uniform_(-0.5, 0.5, generator=gen)
    return model


def calibrate(model, x):
    """Running statistics of batch norm from ``x`` (one training pass with momentum 1), so that eval
    mode normalises sensibly; the model is left in eval mode."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d)]
    saved = copy.deepcopy(model.network.feedback.spectral.state_dict())
    for bn in bns:
        bn.momentum = 1.0
    model.train()
    bptt.unroll(model.network, x, time_steps=model.producer.time_steps, leak=model.producer.leak)
    for bn in bns:
        bn.momentum = 0.1
    model.network.feedback.spectral.load_state_dict(saved)
    return model.eval()


def tiny_input(spec_name, *, batch=8, spike_train=False, time_steps=6, seed=3):
    gen = torch.Generator().manual_seed(seed)
    shape = SPECS[spec_name][1]
    if spike_train:
        return (torch.rand((batch, time_steps, *shape), generator=gen, dtype=torch.float64) < 0.4).double()
    return torch.rand((batch, *shape), generator=gen, dtype=torch.float64) * 2 - 0.5


def masks_of(model, x, spike_train, leak, time_steps):
    """The dropout masks a pass draws (its first RNG use), with the model's state left as it was."""
    saved = copy.deepcopy(model.state_dict())
    with torch.no_grad():
        x_bar = time_average(x[:, :time_steps], leak) if spike_train else x
        _, state = model.network.map_inputs(x_bar)
    model.load_state_dict(saved)
    return state.input_mask, state.forward_masks, state.feedback_mask


def compare_with_reference(spec_name, producer, surrogate, *, detach_reset=False, spike_train=False, train=True):
    leak = 0.9 if producer == "lif" else 1.0
    steps = 6
    model = tiny_model(spec_name, producer, surrogate=surrogate, slope=1.5 if surrogate == "rectangular" else None,
                       detach_reset=detach_reset, time_steps=steps, leak=leak)
    x = tiny_input(spec_name, spike_train=spike_train, time_steps=steps)
    if train:
        model.train()
    else:
        calibrate(model, x)
    slope = model.surrogate.slope
    smooth = (lambda v: torch.sigmoid(slope * v)) if surrogate == "sigmoid" else \
        (lambda v: torch.clamp(slope * v + 0.5, 0, 1))
    x.requires_grad_(not spike_train)
    y = torch.arange(x.shape[0]) % 3
    before = copy.deepcopy(model.state_dict())
    torch.manual_seed(11)
    masks = masks_of(model, x, spike_train, leak, steps)
    u0 = model.network.feedback.spectral.u.clone()

    logits_ref, rate_ref, running = reference_unroll(model, x, masks, u0, time_steps=steps, leak=leak, smooth=smooth,
                                                     detach_reset=detach_reset, spike_train=spike_train)
    grads_ref = torch.autograd.grad(F.cross_entropy(logits_ref, y), [*model.parameters(), *([x] if x.requires_grad else [])])

    torch.manual_seed(11)
    logits = model(x)
    grads = torch.autograd.grad(F.cross_entropy(logits, y), [*model.parameters(), *([x] if x.requires_grad else [])])
    torch.testing.assert_close(logits, logits_ref, rtol=1e-12, atol=1e-12)
    names = [n for n, _ in model.named_parameters()] + (["x"] if x.requires_grad else [])
    for name, g, g_ref in zip(names, grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12, msg=lambda m: f"{name}: {m}")
    # Something happened: spikes in the read-out, but not everywhere, and gradient through W¹.
    assert 0.01 < float(rate_ref.detach().mean()) < 0.99
    fb_grad = grads[names.index("network.feedback.op.weight")]
    assert float(fb_grad.abs().max()) > 1e-3

    # The running statistics moved exactly once: input from F¹x (or F¹x̄), the others by the mean over steps.
    net = model.network
    bns = {"input": net.input_layer.bn, **{i: layer.bn for i, layer in enumerate(net.forward_layers)}}
    for key, bn in bns.items():
        prefix = "network.input_layer.bn" if key == "input" else f"network.forward_layers.{key}.bn"
        old_mean, old_var = before[f"{prefix}.running_mean"], before[f"{prefix}.running_var"]
        if train:
            mean, var = running[key]
            torch.testing.assert_close(bn.running_mean, 0.9 * old_mean + 0.1 * mean, rtol=1e-12, atol=1e-14)
            torch.testing.assert_close(bn.running_var, 0.9 * old_var + 0.1 * var, rtol=1e-12, atol=1e-14)
            assert int(bn.num_batches_tracked) == int(before[f"{prefix}.num_batches_tracked"]) + 1
        else:
            assert torch.equal(bn.running_mean, old_mean) and torch.equal(bn.running_var, old_var)
    return model


@pytest.mark.parametrize("spec_name", list(SPECS))
@pytest.mark.parametrize("producer", ["if", "lif"])
@pytest.mark.parametrize("surrogate", ["sigmoid", "rectangular"])
def test_gradients_equal_a_hand_written_unrolled_reference(spec_name, producer, surrogate):
    compare_with_reference(spec_name, producer, surrogate)


@pytest.mark.parametrize("spec_name, producer", [("fc2", "lif"), ("conv", "if")])
def test_gradients_with_detached_reset(spec_name, producer):
    compare_with_reference(spec_name, producer, "sigmoid", detach_reset=True)


@pytest.mark.parametrize("spec_name, producer", [("fc", "lif"), ("fc2", "if"), ("conv", "lif")])
def test_gradients_for_spike_train_input(spec_name, producer):
    compare_with_reference(spec_name, producer, "sigmoid", spike_train=True)


@pytest.mark.parametrize("spike_train", [False, True])
def test_gradients_in_eval_mode_use_running_statistics(spike_train):
    compare_with_reference("fc2", "lif", "rectangular", spike_train=spike_train, train=False)


# -- the forward is the IDE simulation --------------------------------------------------------


@pytest.mark.parametrize("spec_name", list(SPECS))
@pytest.mark.parametrize("producer", ["if", "lif"])
@pytest.mark.parametrize("spike_train", [False, True])
def test_eval_forward_equals_the_producer_exactly(spec_name, producer, spike_train):
    model = tiny_model(spec_name, producer)
    x = tiny_input(spec_name, spike_train=spike_train)
    calibrate(model, tiny_input(spec_name, spike_train=spike_train, seed=4))
    with torch.no_grad():
        eq = model.producer(model.network, x)
    unrolled = bptt.unroll(model.network, x, time_steps=6, leak=model.producer.leak)
    # The same ops on the same values: equal to rounding (a spike that differed would move a rate
    # by at least λ^(T−1)/Σλᵏ > 0.06).
    torch.testing.assert_close(unrolled.a, eq.a, rtol=0, atol=1e-14)
    assert unrolled.a.requires_grad and 0.01 < float(eq.a.mean()) < 0.99
    torch.testing.assert_close(unrolled.stats["firing_rate"], eq.stats["firing_rate"], rtol=0, atol=1e-15)
    for name in ("firing_rate_per_layer", "silent_per_layer", "saturated_per_layer"):
        for a, b in zip(unrolled.stats[name], eq.stats[name], strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-15)
    assert unrolled.stats["time_steps"] == eq.stats["time_steps"]
    # The classifier: BPTT with grad (unrolled), BPTT without grad (the producer) and IDE agree.
    logits_bptt = model(x)
    with torch.no_grad():
        logits_nograd = model(x)
    model.set_method("ide")
    with torch.no_grad():
        logits_ide = model(x)
    torch.testing.assert_close(logits_bptt, logits_ide, rtol=0, atol=1e-14)
    assert torch.equal(logits_nograd, logits_ide)


@pytest.mark.parametrize("producer", ["if", "lif"])
@pytest.mark.parametrize("spike_train", [False, True])
def test_train_forward_equals_the_ide_simulation_of_a_single_layer_net(producer, spike_train):
    model = tiny_model("fc", producer).train()
    x = tiny_input("fc", spike_train=spike_train)
    saved = copy.deepcopy(model.state_dict())
    torch.manual_seed(5)
    with torch.no_grad():
        eq = model.producer(model.network, x)
    model.load_state_dict(saved)
    torch.manual_seed(5)
    unrolled = bptt.unroll(model.network, x, time_steps=6, leak=model.producer.leak)
    torch.testing.assert_close(unrolled.a, eq.a, rtol=0, atol=1e-12)
    assert 0.05 < float(eq.a.mean()) < 0.95


def test_input_running_statistics_move_as_in_an_ide_training_step():
    model = tiny_model("fc", "lif").train()
    x = tiny_input("fc")
    saved = copy.deepcopy(model.state_dict())
    torch.manual_seed(5)
    model(x)  # BPTT
    bptt_state = copy.deepcopy(model.state_dict())
    model.load_state_dict(saved)
    model.set_method("ide")
    torch.manual_seed(5)
    model(x)
    for key in ("running_mean", "running_var", "num_batches_tracked"):
        name = f"network.input_layer.bn.{key}"
        torch.testing.assert_close(bptt_state[name], model.state_dict()[name], rtol=1e-12, atol=1e-14)
    name = "network.feedback.spectral.u"  # one power-iteration step each
    torch.testing.assert_close(bptt_state[name], model.state_dict()[name], rtol=0, atol=0)


# -- the classifier and the presets ------------------------------------------------------------


def test_classifier_method_api():
    model = models.build_model("f400", method="bptt", producer_options=dict(time_steps=2))
    assert model.method == "bptt" and model.surrogate == bptt.Surrogate("sigmoid", 4.0)
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    F.cross_entropy(model(x), y).backward()
    assert model.last_backward is None
    assert set(model.last_forward) == {"time_steps", "firing_rate", "firing_rate_per_layer", "silent_per_layer",
                                       "saturated_per_layer"}
    assert model.last_forward["time_steps"] == 2
    assert model.network.input_layer.op.weight.grad.abs().sum() > 0
    model.set_method("bptt", surrogate="rectangular", surrogate_slope=2.0, detach_reset=True)
    assert model.surrogate.slope == 2.0 and model.detach_reset
    with pytest.raises(ValueError, match="^unknown method 'bpt'; choose one of ide, bptt$"):
        model.set_method("bpt")
    with pytest.raises(ValueError, match="^unknown surrogate"):
        model.set_method("bptt", surrogate="step")
    with pytest.raises(ValueError, match="^method 'bptt' unrolls the spiking simulation and needs the if or lif "
                                         "producer, not AnalyticProducer$"):
        model.set_producer("analytic")
    assert isinstance(model.producer, LIFProducer)  # unchanged by the refused switch
    model.set_method("ide")
    model.set_producer("analytic")
    with pytest.raises(ValueError, match="needs the if or lif producer"):
        model.set_method("bptt")
    with pytest.raises(ValueError, match="needs the if or lif producer"):
        models.build_model("f400", method="bptt", producer="analytic", producer_options={})
    model = models.build_model("f400", method="bptt", producer="if", producer_options=dict(time_steps=3))
    assert isinstance(model.producer, IFProducer)


def test_producer_vth_must_match_the_network():
    model = tiny_model("fc", "lif")
    model.set_producer("lif", {"time_steps": 3, "vth": 1.0})
    with pytest.raises(ValueError, match="differs from the network's vth"):
        model(tiny_input("fc"))


# -- command line ------------------------------------------------------------------------------


def test_train_resume_and_eval_with_bptt(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--epochs", "1", "--method", "bptt", "--surrogate", "rectangular",
                 "--surrogate_slope", "2", "--out", str(out)]) == 0
    assert "BPTT, rectangular surrogate slope 2" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert (config["method"], config["surrogate"], config["surrogate_slope"]) == ("bptt", "rectangular", 2.0)
    rows = metrics(out)
    assert "backward_evals_mean" not in rows[0] and rows[0]["firing_rate"] > 0
    assert main(["train", "--epochs", "2", "--threads", "1", "--out", str(out), "--resume"]) == 0
    rows = metrics(out)
    assert len(rows) == 2 and json.loads((out / "config.json").read_text())["method"] == "bptt"
    # The resumed run is the uninterrupted one.
    whole = tmp_path / "whole"
    assert main(["train", *SMALL, "--epochs", "2", "--method", "bptt", "--surrogate", "rectangular",
                 "--surrogate-slope", "2", "--out", str(whole)]) == 0
    assert comparable(rows) == comparable(metrics(whole))
    with pytest.raises(SystemExit, match=r"differ from the run's: \{'method': \('bptt', 'ide'\)\}"):
        main(["train", *SMALL, "--epochs", "3", "--method", "ide", "--out", str(out), "--resume"])
    report = tmp_path / "eval.json"
    assert main(["eval", str(out / "checkpoint-last.pt"), "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    assert result["trained_method"] == "bptt"
    assert result["results"][0]["acc"] == rows[-1]["test_acc"]  # eval is the trainer's evaluation
    assert result["results"][0]["loss"] == pytest.approx(rows[-1]["test_loss"])
    # At the analytic equilibrium a BPTT-trained model evaluates like any other: no T, one solve per batch.
    assert main(["eval", str(out), "--producer", "analytic", "--f-max-iter", "2", "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    (row,) = result["results"]
    assert (result["producer"], result["trained_method"], result["samples"]) == ("analytic", "bptt", 256)
    assert row["time_steps"] is None and "firing_rate" not in row
    assert row["forward_status"] == {"MAX_ITER": math.ceil(256 / 200)}  # 2 iterations are too few; batches of 200


def test_runs_without_a_method_setting_still_load(tmp_path):
    out = tmp_path / "old"
    assert main(["train", *SMALL, "--epochs", "1", "--out", str(out)]) == 0
    config_path = out / "config.json"
    old = {k: v for k, v in json.loads(config_path.read_text()).items()
           if k not in ("method", "surrogate", "surrogate_slope")}
    config_path.write_text(json.dumps(old))
    for name in ("checkpoint-last.pt", "checkpoint-best.pt"):
        ckpt = torch.load(out / name, weights_only=False)
        ckpt["config"] = {k: v for k, v in ckpt["config"].items() if k in old}
        torch.save(ckpt, out / name)
    report = tmp_path / "eval.json"
    assert main(["eval", str(out), "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    assert result["trained_method"] == "ide"  # a missing method reads as the default
    assert result["results"][0]["loss"] == pytest.approx(metrics(out)[-1]["test_loss"])
    assert main(["train", "--epochs", "2", "--threads", "1", "--out", str(out), "--resume"]) == 0
    assert [row["epoch"] for row in metrics(out)] == [1, 2]
    assert json.loads(config_path.read_text())["method"] == "ide"


@pytest.mark.parametrize("argv, message", [
    (["--method", "bptt", "--producer", "analytic"], "--method bptt unrolls the spiking simulation: use --producer if "
                                                      "or lif, not analytic"),
    (["--method", "bptt", "--b-tol", "1e-3"], "--b_tol: settings of the implicit backward apply to --method ide only"),
    (["--method", "bptt", "--b-options", "memory=3"],
     "--b_options: settings of the implicit backward apply to --method ide only"),
    (["--method", "bptt", "--bn-backward", "simulated"],
     "--bn_backward: settings of the implicit backward apply to --method ide only"),
    (["--surrogate", "rectangular"], "--surrogate applies to --method bptt only"),
])
def test_inconsistent_method_settings_are_one_line_errors(argv, message, tmp_path):
    with pytest.raises(SystemExit) as error:
        main(["train", *SMALL, *argv, "--out", str(tmp_path / "run")])
    assert str(error.value).startswith(f"error: {message}")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv, message", [
    (["--method", "bpt"], "invalid choice: 'bpt'"),
    (["--method", "bptt", "--surrogate", "tanh"], "invalid choice: 'tanh'"),
    (["--method", "bptt", "--surrogate-slope", "0"], "must be a number > 0, got '0'"),
    (["--method", "bptt", "--surrogate-slope", "nan"], "must be a number > 0, got 'nan'"),
])
def test_bad_method_flags_are_argparse_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as error:
        main(["train", *argv])
    assert error.value.code == 2
    assert message in capsys.readouterr().err


# -- the benchmark's peers compute the same BPTT --------------------------------------------


@pytest.mark.parametrize("peer", ["eager", "spikingjelly"])
@pytest.mark.parametrize("producer", ["if", "lif"])
def test_benchmark_peers_compute_the_same_gradients(peer, producer):
    if peer == "spikingjelly":
        pytest.importorskip("spikingjelly")
    from bench import peers

    model = tiny_model("fc", producer)
    leak = model.producer.leak
    make = {"eager": peers.eager_f400, "spikingjelly": peers.spikingjelly_f400}[peer]
    other = make(model, time_steps=6, leak=leak)
    x = tiny_input("fc")
    y = torch.arange(x.shape[0]) % 3
    saved = copy.deepcopy(model.state_dict())
    results = []
    for net in (model, other):
        model.load_state_dict(saved)
        torch.manual_seed(2)
        logits = net(x)
        results.append((logits, torch.autograd.grad(F.cross_entropy(logits, y), list(model.parameters()))))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-12, atol=1e-12)
    for g, g_ref in zip(results[1][1], results[0][1]):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)


def test_snntorch_peer_runs_where_installed():
    pytest.importorskip("snntorch")
    from bench import peers

    model = tiny_model("fc", "lif")
    logits = peers.snntorch_f400(model, time_steps=6, leak=model.producer.leak)(tiny_input("fc"))
    logits.sum().backward()
    assert torch.isfinite(model.network.feedback.op.weight.grad).all()
