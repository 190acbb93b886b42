"""The fast paths of the IDE step against autograd: the explicit transposed Jacobian, the reused
input op, the fused feedback current, and the whole training step's gradients, in float64."""

import copy
import dataclasses
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import models
from implicit_snn.app._allocator import retain_freed_memory
from implicit_snn import FeedbackSNN, ImplicitClassifier, SpectralNorm, SynapticLayer
from implicit_snn._ops import apply_op, apply_op_known, apply_op_transposed
from implicit_snn.layers import output_statistics
from implicit_snn.neurons import fire_, fire_unleaked_

# One network of each kind: fully connected, conv with conv feedback, a strided conv layer with
# an upsampling transposed-conv feedback, and multi-layer nets (batch norm inside the map).
NETWORKS = {
    "linear": ("6 (F6)", (1, 4, 4)),
    "linear-2-layer": ("5-4 (F5)", (1, 4, 4)),
    "conv": ("3C3 (F3C3)", (1, 6, 6)),
    "conv-transposed-feedback": ("3C3-4C3s (F3C3u)", (1, 6, 6)),
    "conv-3-layer": ("3C3-4C3s-2C3 (F3C3u)", (1, 6, 6)),
}


def build(kind, *, training, seed=0, dropout=0.2):
    torch.manual_seed(seed)
    spec, shape = NETWORKS[kind]
    model = models.from_spec(spec, shape, 3, dropout=dropout, producer="lif",
                             producer_options=dict(time_steps=6)).double().train(training)
    x = torch.randn(5, *shape, dtype=torch.float64)
    return model, x


def equilibrium_and_args(model, x):
    net = model.network
    eq = model.producer(net, x)
    return eq.a, net.differentiable_args(*eq.f_args)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("kind", sorted(NETWORKS))
def test_explicit_transposed_jacobian_equals_autograd_vjps(kind, training):
    model, x = build(kind, training=training)
    a, args = equilibrium_and_args(model, x)
    z = a.clone().requires_grad_()
    fz, jt = model.network.linearized_map(z, *args)
    reference = model.network.fixed_point_map(z, *args)
    assert torch.equal(fz, reference)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        v = torch.randn(fz.shape, generator=gen, dtype=fz.dtype)
        g = torch.randn(fz.shape, generator=gen, dtype=fz.dtype)
        (expected,) = torch.autograd.grad(reference, z, v, retain_graph=True)
        assert expected.abs().max() > 1e-3  # not trivially zero
        assert torch.allclose(jt(v), expected, rtol=0, atol=1e-12)
        assert torch.allclose(jt(v, add=g), expected + g, rtol=0, atol=1e-12)


def test_batch_statistics_couple_the_samples_and_the_operator_knows():
    # In training, batch norm inside a 2-layer map makes one sample's output depend on the others.
    model, x = build("linear-2-layer", training=True, dropout=0.0)
    a, args = equilibrium_and_args(model, x)
    z = a.clone().requires_grad_()
    fz, jt = model.network.linearized_map(z, *args)
    v = torch.zeros_like(fz)
    v[0] = 1.0
    cross = jt(v)[1:]
    (expected,) = torch.autograd.grad(fz, z, v)
    assert cross.abs().max() > 1e-6
    assert torch.allclose(cross, expected[1:], rtol=0, atol=1e-12)


def test_feedback_with_batch_norm_is_a_per_channel_scale():
    torch.manual_seed(0)
    inp = SynapticLayer(nn.Linear(4, 5), batch_norm=True, dropout=0.3)
    fb = SynapticLayer(nn.Linear(5, 5, bias=False), batch_norm=True, dropout=0.3, spectral=SpectralNorm(1.0))
    net = FeedbackSNN((4,), inp, [], fb, vth=1.0).double()
    with torch.no_grad():
        fb.bn.running_var.uniform_(0.5, 2.0)
        fb.bn.weight.uniform_(0.5, 1.5)
    model = ImplicitClassifier(net, 2, producer="if", producer_options=dict(time_steps=5)).double().train()
    x = torch.randn(6, 4, dtype=torch.float64)
    a, args = equilibrium_and_args(model, x)
    z = a.clone().requires_grad_()
    fz, jt = net.linearized_map(z, *args)
    v = torch.randn_like(fz)
    (expected,) = torch.autograd.grad(fz, z, v)
    assert torch.allclose(jt(v), expected, rtol=0, atol=1e-12)


def training_step_gradients(model, x, y, vjp):
    """Parameter gradients of one training step, from the model's current state and RNG seed 7;
    ``vjp="autograd"`` is the plain path: VJPs of f's graph, and f recomputing its input op."""
    model = copy.deepcopy(model)
    model.adjoint.vjp = vjp
    if vjp == "autograd":
        net, original = model.network, model.network.differentiable_args

        def recomputing(x_bar, state):
            x_bar, state = original(x_bar, state)
            return x_bar, dataclasses.replace(state, input_linear=None)

        net.differentiable_args = recomputing
    model.adjoint.tol = 1e-13
    model.adjoint.max_iter = 200
    torch.manual_seed(7)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    assert model.last_backward.success
    return {name: p.grad for name, p in model.named_parameters()}, model.state_dict()


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("kind", sorted(NETWORKS))
def test_training_step_gradients_equal_the_autograd_path(kind, training):
    model, x = build(kind, training=training)
    y = torch.tensor([0, 1, 2, 0, 1])
    fast, fast_state = training_step_gradients(model, x, y, "auto")
    slow, slow_state = training_step_gradients(model, x, y, "autograd")
    for name, expected in slow.items():
        if expected is None:
            assert fast[name] is None
            continue
        assert fast[name] is not None, name
        scale = max(1.0, float(expected.abs().max()))
        assert (fast[name] - expected).abs().max() <= 1e-10 * scale, name
    for name, value in slow_state.items():  # the same running statistics and power-iteration vectors
        assert torch.equal(fast_state[name], value), name
    assert any(g is not None and g.abs().max() > 1e-6 for g in fast.values())


def test_vjp_option_is_checked():
    with pytest.raises(ValueError, match="`vjp` must be one of"):
        models.build_model("f400", b_options=dict(vjp="explicit"))


OPS = {
    "linear": (lambda: nn.Linear(7, 4), (3, 7)),
    "conv-strided-padded": (lambda: nn.Conv2d(2, 3, 3, stride=2, padding=1), (3, 2, 7, 7)),
    "conv-even": (lambda: nn.Conv2d(2, 3, 5, stride=2, padding=2), (3, 2, 8, 8)),
    "conv-transposed": (lambda: nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1, output_padding=1), (3, 3, 4, 4)),
    # stride 1, dilated, grouped
    "conv-same": (lambda: nn.Conv2d(3, 4, 5, padding=2), (3, 3, 6, 6)),
    "conv-valid-dilated": (lambda: nn.Conv2d(2, 3, 3, padding=(0, 1), dilation=(2, 1)), (3, 2, 9, 7)),
    "conv-grouped": (lambda: nn.Conv2d(4, 6, 3, padding=1, groups=2), (3, 4, 5, 5)),
}


@pytest.mark.parametrize("kind", sorted(OPS))
def test_an_op_with_known_output_has_the_op_s_gradients(kind):
    torch.manual_seed(0)
    make, shape = OPS[kind]
    op = make().double()
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    out = apply_op(op, x)
    g = torch.randn_like(out)
    expected = torch.autograd.grad(out, (x, op.weight, op.bias), g)
    known = apply_op_known(op, x, out.detach())
    assert torch.equal(known, out.detach())
    got = torch.autograd.grad(known, (x, op.weight, op.bias), g)
    for actual, reference in zip(got, expected):
        assert torch.allclose(actual, reference, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", sorted(OPS))
def test_transposed_op_is_the_adjoint(kind):
    torch.manual_seed(1)
    make, shape = OPS[kind]
    op = make().double()
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    out = apply_op(op, x, bias=False)
    g = torch.randn_like(out)
    (expected,) = torch.autograd.grad(out, x, g)
    got = apply_op_transposed(op, g, op.weight.detach(), x.shape)
    assert got.shape == x.shape
    assert torch.allclose(got, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", ["linear", "conv", "conv-transposed-feedback"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_fused_feedback_current_equals_the_sum(dropout, kind):
    model, x = build(kind, training=True, dropout=dropout)
    net = model.network
    _, state = net.map_inputs(x)
    spikes = (torch.rand(5, *net.layer_shapes[-1], dtype=torch.float64) < 0.5).double()
    drive = torch.randn(5, *net.layer_shapes[0], dtype=torch.float64)
    expected = drive + net.feedback_current(spikes, state)
    assert torch.allclose(net.add_feedback_current(drive, spikes, state), expected, rtol=0, atol=1e-14)


def test_output_statistics_are_batch_norm_s():
    z = torch.randn(6, 3, 4, 4, dtype=torch.float64) * 3 + 1
    mean, var = output_statistics(z)
    assert torch.allclose(mean, z.mean(dim=(0, 2, 3)), atol=1e-14)
    assert torch.allclose(var, z.var(dim=(0, 2, 3), unbiased=False), atol=1e-13)


def test_dropout_masks_keep_with_probability_one_minus_p():
    layer = SynapticLayer(nn.Linear(3, 3), dropout=0.3).train()
    torch.manual_seed(0)
    mask = layer.sample_mask((400, 500), like=torch.zeros(1))
    values = torch.unique(mask)
    assert values.numel() == 2 and values[0] == 0.0 and abs(float(values[1]) - 1 / 0.7) < 1e-6
    kept = float((mask > 0).double().mean())
    assert abs(kept - 0.7) < 4 * (0.7 * 0.3 / 200_000) ** 0.5  # four standard errors


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_the_allocator_setting_applies_on_linux():
    # Its effect (no page faults for a step's re-allocated tensors) is measured by bench_step.py;
    # here: glibc accepts every option, and calling it again is harmless.
    assert retain_freed_memory() and retain_freed_memory()
    assert torch.ones(1 << 20).sum() == 1 << 20


@pytest.mark.parametrize("leak", [1.0, 0.9])
def test_unleaked_potential_fires_as_the_leaky_neuron(leak):
    gen = torch.Generator().manual_seed(3)
    u_ref, u_new = torch.zeros(64, 50, dtype=torch.float64), torch.zeros(64, 50, dtype=torch.float64)
    s_ref, s_new = torch.empty_like(u_ref), torch.empty_like(u_new)
    fired = 0.0
    for _ in range(40):
        current = torch.rand(64, 50, generator=gen, dtype=torch.float64) * 1.5 - 0.2
        fire_(u_ref, current, s_ref, vth=1.0, leak=leak)
        fire_unleaked_(u_new, current, s_new, vth=1.0, leak=leak)
        assert torch.equal(s_ref, s_new)
        assert torch.allclose(u_ref, leak * u_new, rtol=0, atol=1e-12)
        fired += float(s_new.mean())
    assert 0.1 < fired / 40 < 0.9
