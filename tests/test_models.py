"""The model zoo: the paper's parameter and neuron counts, training steps, spec parsing, gradients."""

import inspect

import pytest
import torch

import models
from implicit_snn.producers import AnalyticProducer, IFProducer, LIFProducer

# Trainable parameters of the reference implementation, counted by instantiating it.
REFERENCE_PARAMETERS = {
    ("f400", 10): 478_811, ("f64c5", 10): 229_643, ("f64c5_nmnist", 10): 290_763,
    ("alexnet_f", 10): 3_709_515, ("alexnet_f", 100): 5_184_165,
    ("cifarnet_f", 10): 11_840_011, ("cifarnet_f", 100): 14_789_221,
}
# Spiking neurons plus input units, as the paper counts them.
REFERENCE_NEURONS = {"f400": 1_184, "f64c5": 13_328, "f64c5_nmnist": 20_808, "alexnet_f": 158_720, "cifarnet_f": 232_448}
INPUTS = {"f400": (1, 28, 28), "f64c5": (1, 28, 28), "f64c5_nmnist": (2, 34, 34), "alexnet_f": (3, 32, 32),
          "cifarnet_f": (3, 32, 32)}


def test_every_preset_is_registered():
    assert set(models.available_models()) >= set(REFERENCE_NEURONS)
    assert all(models.describe_models().values())


@pytest.mark.parametrize("name, classes", sorted(REFERENCE_PARAMETERS))
def test_parameter_counts_match_the_reference(name, classes):
    model = models.build_model(name, num_classes=classes)
    assert model.num_parameters() == REFERENCE_PARAMETERS[(name, classes)]  # exactly


@pytest.mark.parametrize("name", sorted(REFERENCE_NEURONS))
def test_neuron_counts_match_the_paper(name):
    model = models.build_model(name)
    inputs = 1
    for size in INPUTS[name]:
        inputs *= size
    assert model.network.num_neurons + inputs == REFERENCE_NEURONS[name]


@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.slow) if name == "cifarnet_f" else name
                                  for name in sorted(REFERENCE_NEURONS)])  # CIFARNet-F: ~6 s
def test_a_few_training_steps_on_a_fixed_batch_decrease_the_loss(name, device):
    torch.manual_seed(0)
    model = models.build_model(name, producer_options=dict(time_steps=4)).to(device).train()
    shape = (2, *INPUTS[name])
    if name == "f64c5_nmnist":
        x = (torch.rand(2, 4, *INPUTS[name], device=device) < 0.2).float()
    else:
        x = torch.randn(shape, device=device)
    y = torch.tensor([0, 1], device=device)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    losses = []
    for _ in range(4):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    result = model.last_backward  # the last step's backward solve: per-sample residuals, within its budget
    assert result.rel_residual.shape == (2,) and 1 <= result.n_evals <= model.adjoint.max_iter + 1
    assert 0.0 <= float(model.last_forward["firing_rate"]) <= 1.0


def test_implicit_gradient_through_the_spiking_model_equals_the_dense_one(float64):
    torch.manual_seed(0)
    model = models.from_spec("6-5 (F6)", (4,), 3, dropout=0.0, producer="if", producer_options=dict(time_steps=50),
                             b_tol=1e-11, b_max_iter=200).train()
    x = torch.randn(3, 4)
    y = torch.tensor([0, 1, 2])
    net = model.network
    eq = model.producer(net, x)
    f_args = net.differentiable_args(*eq.f_args)
    assert net.couples_samples(*f_args)
    a = model.adjoint(net.fixed_point_map, eq.a, *f_args, coupled=True)
    loss = torch.nn.functional.cross_entropy(model.classifier(a), y)
    params = [p for p in net.parameters()]
    got = torch.autograd.grad(loss, params, allow_unused=True)

    # Dense: v = (I − Jᵀ)⁻¹ ∂L/∂a with the full batch Jacobian of f at a* (batch norm couples samples).
    f_args = net.differentiable_args(*eq.f_args)  # same values; a fresh graph for the feedback weight
    a_leaf = eq.a.clone().requires_grad_()
    (grad_a,) = torch.autograd.grad(torch.nn.functional.cross_entropy(model.classifier(a_leaf), y), a_leaf)
    jac = torch.autograd.functional.jacobian(lambda z: net.fixed_point_map(z, *f_args), eq.a)
    n = eq.a.numel()
    jac = jac.reshape(n, n)
    v = torch.linalg.solve(torch.eye(n) - jac.T, grad_a.reshape(n)).reshape(eq.a.shape)
    expected = torch.autograd.grad(net.fixed_point_map(eq.a, *f_args), params, v, allow_unused=True)
    for g, e in zip(got, expected):
        if e is None:
            assert g is None or float(g.abs().max()) == 0.0
            continue
        torch.testing.assert_close(g, e, rtol=1e-8, atol=1e-10)
    # Batch norm couples the samples here: solved as one problem, the adjoint converges.
    assert model.last_backward.success, model.last_backward.summary()


@pytest.mark.parametrize("producer", ["if", "lif", "analytic"])
def test_producer_and_backward_can_be_swapped_after_construction(producer):
    model = models.build_model("f400", producer_options=dict(time_steps=3))
    options = dict(time_steps=3) if producer != "analytic" else dict(f_max_iter=60)
    model.set_producer(producer, options)
    model.set_backward("anderson", b_max_iter=20, b_tol=1e-5, b_options={"memory": 4})
    model.train()
    model(torch.randn(4, 1, 28, 28)).sum().backward()
    assert model.last_backward.n_evals <= 21
    forward = model.last_forward
    if producer == "analytic":
        assert type(model.producer) is AnalyticProducer and forward["forward_n_evals"] <= 61
        assert (forward["forward_status"] == "SUCCESS") == (forward["forward_rel_residual_max"] <= model.producer.f_tol)
    else:
        assert type(model.producer) is {"if": IFProducer, "lif": LIFProducer}[producer] and forward["time_steps"] == 3


def test_eval_mode_is_deterministic_and_builds_no_graph():
    model = models.build_model("f64c5", producer_options=dict(time_steps=3)).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        first, second = model(x), model(x)
    assert torch.equal(first, second)
    assert not first.requires_grad


def test_spectral_constraint_holds_after_optimiser_steps():
    torch.manual_seed(0)
    for name, options in [("f400", {}), ("f64c5", {}), ("f64c5", {"operator_norm": True})]:
        model = models.build_model(name, producer_options=dict(time_steps=2), **options).train()
        optimiser = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        x = torch.randn(4, 1, 28, 28)
        y = torch.randint(0, 10, (4,))
        for _ in range(10):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        feedback = model.network.feedback
        weight = feedback.effective_weight(update=False).detach()
        if options.get("operator_norm"):
            norm = operator_norm(feedback.op, weight, model.network.layer_shapes[-1])
        else:
            norm = float(torch.linalg.matrix_norm(weight.reshape(weight.shape[0], -1), 2))
        assert norm <= 1.0 * 1.02, (name, options, norm)


def operator_norm(op, weight, input_shape, iterations=300):
    """‖conv‖₂ by power iteration on the operator (the oracle for the operator-norm option)."""
    v = torch.randn(1, *input_shape)
    for _ in range(iterations):
        v = (v / v.norm()).requires_grad_()
        out = torch.nn.functional.conv2d(v, weight, None, op.stride, op.padding)
        (v,) = torch.autograd.grad(out, v, out)
    v = v / v.norm()
    return float(torch.nn.functional.conv2d(v, weight, None, op.stride, op.padding).norm())


def test_reshaped_kernel_norm_can_exceed_the_bound_as_an_operator():
    """Why the operator-norm option exists (reference defect B10): the default can violate ‖W‖₂ ≤ c."""
    model = models.build_model("f64c5")
    feedback = model.network.feedback
    weight = feedback.effective_weight(update=False).detach()
    assert operator_norm(feedback.op, weight, model.network.layer_shapes[-1], iterations=100) > 1.1
    exact = models.build_model("f64c5", operator_norm=True).network.feedback
    weight = exact.effective_weight(update=False).detach()
    assert operator_norm(exact.op, weight, model.network.layer_shapes[-1], iterations=100) <= 1.01


@pytest.mark.parametrize("spec, message", [
    ("400", "must look like"), ("400 (F300)", "feedback must feed the first layer"), ("40x (F40)", "neither"),
    ("64C5s-100 (F64C5)", "mixes"), ("64C5 (F64)", "same kind"), ("64C5 (G64C5)", "must be 'FN'"),
])
def test_malformed_specs_are_clear_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        models.parse_spec(spec)


def test_spec_parser_reads_the_paper_notation():
    parsed = models.parse_spec("96C3s-256C3-384C3s-384C3-256C3 (F96C3u)")
    assert [(layer.channels, layer.kernel, layer.stride) for layer in parsed.layers] == [
        (96, 3, 2), (256, 3, 1), (384, 3, 2), (384, 3, 1), (256, 3, 1)]
    assert parsed.feedback.channels == 96 and parsed.upsample
    assert not models.parse_spec("400 (F400)").layers[0].is_conv


def test_feedback_that_does_not_close_the_loop_is_an_error():
    with pytest.raises(ValueError, match="feedback maps layer"):
        models.from_spec("32C3s-32C3s (F32C3)", (1, 16, 16), 10)


def test_unknown_preset_and_bad_options():
    with pytest.raises(KeyError, match="did you mean 'f400'"):
        models.build_model("f40")
    with pytest.raises(TypeError, match="unknown option"):
        models.build_model("f400", producer_options=dict(tme_steps=3))
    model = models.build_model("f400", producer_options=dict(time_steps=2)).eval()  # the registry still works
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_one_build_model_takes_a_preset_or_a_spec_string():
    torch.manual_seed(0)
    spec = models.build_model("400 (F400)", 10, in_shape=(1, 28, 28), b_solver="anderson", b_options={"memory": 4})
    preset = models.build_model("f400")
    # The spec string of a preset builds the preset's network: the same parameter shapes.
    assert [p.shape for p in spec.parameters()] == [p.shape for p in preset.parameters()]
    assert (type(spec.adjoint.solver).__name__, spec.adjoint.solver.memory) == ("Anderson", 4)
    assert spec(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert models.build_model("8 (F8)", 3, in_shape=(5,)).classifier.out_features == 3
    assert models.build_model("f400", 7, in_shape=(1, 28, 28)).classifier.out_features == 7
    with pytest.raises(ValueError, match=r"^the spec-string model '400 \(F400\)' needs `in_shape`, the per-sample "
                                         r"input shape \(e\.g\. in_shape=\(1, 28, 28\)\)$"):
        models.build_model("400 (F400)")
    with pytest.raises(ValueError, match=r"^model f400 takes inputs of shape \(1, 28, 28\), not \(3, 32, 32\)$"):
        models.build_model("f400", in_shape=(3, 32, 32))
    with pytest.raises(KeyError, match=r"unknown model 'f4000'; did you mean 'f400'\?.*or a spec string such as"):
        models.build_model("f4000")


def test_set_producer_takes_its_options_as_one_dict():
    model = models.build_model("f400")
    model.set_producer("if", {"time_steps": 7})
    assert (type(model.producer).__name__, model.producer.time_steps) == ("IFProducer", 7)
    model.set_producer("lif", producer_options={"time_steps": 4, "leak": 0.9})
    assert (model.producer.time_steps, model.producer.leak) == (4, 0.9)
    assert list(inspect.signature(model.set_producer).parameters) == ["producer", "producer_options"]  # no **options
    with pytest.raises(TypeError, match="^`producer_options` must be a dict, got list$"):
        model.set_producer("if", [("time_steps", 7)])
    with pytest.raises(TypeError, match="apply to a producer given by name"):
        model.set_producer(model.producer, {"time_steps": 3})
    assert (model.producer.time_steps, model.producer.leak) == (4, 0.9)  # unchanged by the refusals
