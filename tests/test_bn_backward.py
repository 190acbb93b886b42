"""Batch norm in training: what the differentiated f normalises layers 2..N with (``bn_backward``).

The simulation (and the analytic producer's forward solve) normalises layers 2..N with running
statistics. ``bn_backward="simulated"`` differentiates that same map, so its gradient is the
finite-difference gradient of the loss the forward computed; ``"batch"`` (the paper's choice)
differentiates f with batch statistics, another map, and is not.
"""

import json

import pytest
import torch

import models
from implicit_snn.app.cli import main
from tests.helpers import metrics

F = torch.nn.functional


def bn_model(mode, *, spec="5-4-6 (F5)", dropout=0.0, b_solver="broyden", tol=1e-12, **options):
    return models.from_spec(spec, (4,), 3, dropout=dropout, producer="analytic",
                            producer_options=dict(f_tol=1e-13, f_max_iter=400), b_solver=b_solver, b_tol=tol,
                            b_max_iter=400, bn_backward=mode, **options)


def loss_gradient_and_directional_fd(model, x, y, seed=0, eps=1e-6):
    """⟨∇L, d⟩ from the implicit backward and its central difference along a random d (all parameters),
    every evaluation from the same buffers (running statistics, power-iteration vector) and masks."""
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    params = list(model.parameters())
    generator = torch.Generator().manual_seed(seed)
    directions = [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in params]

    def restore():
        for name, value in model.named_buffers():
            value.copy_(buffers[name])

    restore()
    torch.manual_seed(1)
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), params)
    analytic = sum(float((g * d).sum()) for g, d in zip(grads, directions))
    base = [p.detach().clone() for p in params]
    values = []
    for sign in (1.0, -1.0):
        with torch.no_grad():
            for p, b, d in zip(params, base, directions):
                p.copy_(b + sign * eps * d)
            restore()
            torch.manual_seed(1)
            values.append(float(F.cross_entropy(model(x), y)))
    with torch.no_grad():
        for p, b in zip(params, base):
            p.copy_(b)
    restore()
    return analytic, (values[0] - values[1]) / (2 * eps)


@pytest.mark.parametrize("spec, dropout", [("5-4-6 (F5)", 0.0), ("5-4 (F5)", 0.3)])
@pytest.mark.parametrize("vjp", ["auto", "autograd"])
def test_simulated_statistics_give_the_gradient_of_the_computed_loss(spec, dropout, vjp, float64):
    torch.manual_seed(0)
    model = bn_model("simulated", spec=spec, dropout=dropout).train()
    model.adjoint.vjp = vjp
    with torch.no_grad():  # running statistics away from their initial 0 and 1
        for layer in model.network.forward_layers:
            layer.bn.running_mean.uniform_(-0.5, 0.5)
            layer.bn.running_var.uniform_(0.5, 2.0)
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    for seed in range(3):
        analytic, numeric = loss_gradient_and_directional_fd(model, x, y, seed=seed)
        assert abs(analytic - numeric) <= 1e-6 * abs(numeric) + 1e-9, (analytic, numeric)


def test_batch_statistics_in_f_are_not_the_gradient_of_the_computed_loss(float64):
    """The paper's choice, measured: the directional derivative is off by far more than FD error."""
    torch.manual_seed(0)
    model = bn_model("batch").train()
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    analytic, numeric = loss_gradient_and_directional_fd(model, x, y)
    assert abs(analytic - numeric) > 1e-2 * abs(numeric), (analytic, numeric)


def test_both_modes_move_the_running_statistics_once_towards_the_equilibriums_batch_statistics(float64):
    """Either way the running statistics move once per step. Layer 2's input is the same in both modes
    (layer 1's rates at a*), so its statistics move to the same values; deeper layers see rates
    normalised differently."""
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    after = {}
    for mode in ("batch", "simulated"):
        torch.manual_seed(0)
        model = bn_model(mode).train()
        torch.manual_seed(1)
        F.cross_entropy(model(x), y).backward()
        after[mode] = dict(model.named_buffers())
        assert all(int(v) == 1 for k, v in after[mode].items() if "num_batches" in k)
    for key in ("input_layer.bn", "forward_layers.0.bn"):
        for stat in ("running_mean", "running_var"):
            torch.testing.assert_close(after["simulated"][f"network.{key}.{stat}"],
                                       after["batch"][f"network.{key}.{stat}"], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_running_then_updated_normalises_with_the_old_statistics_and_updates_as_batch_norm(momentum, float64):
    """Against nn.BatchNorm1d itself: the update (momentum or cumulative, unbiased variance) in
    training, and the normalisation of the statistics held before it in eval."""
    from implicit_snn.layers import BNMode, SynapticLayer

    torch.manual_seed(0)
    layer = SynapticLayer(torch.nn.Linear(3, 5), batch_norm=True).train()
    layer.bn.momentum = momentum
    with torch.no_grad():
        layer.bn.running_mean.uniform_(-1, 1)
        layer.bn.running_var.uniform_(0.5, 2)
        layer.bn.weight.uniform_(0.5, 1.5)
        layer.bn.bias.uniform_(-0.5, 0.5)
    reference = torch.nn.BatchNorm1d(5, momentum=momentum).double()
    reference.load_state_dict(layer.bn.state_dict())
    z = torch.randn(7, 5)
    expected_out = reference.eval()(z)
    reference.train()(z)
    out = layer.finish(z, bn_mode=BNMode.RUNNING_THEN_UPDATED)
    torch.testing.assert_close(out, expected_out, rtol=1e-12, atol=1e-14)
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(layer.bn.state_dict()[name], value, rtol=1e-12, atol=1e-14)


def test_simulated_statistics_do_not_couple_the_samples(float64):
    """Running statistics act per sample: the adjoint is B independent problems (exact: D + 2 VJPs
    instead of B·D + 2), and the explicit operator equals autograd's VJPs."""
    torch.manual_seed(0)
    x, y = torch.randn(4, 4), torch.tensor([0, 1, 2, 0])
    grads = {}
    for vjp in ("auto", "autograd"):
        torch.manual_seed(0)
        model = bn_model("simulated", b_solver="exact").train()
        model.adjoint.vjp = vjp
        net = model.network
        assert not net.couples_samples(*net.differentiable_args(*net.map_inputs(x)))
        grads[vjp] = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
        assert model.last_backward.n_evals == 6 + 2
    for a, b in zip(grads["auto"], grads["autograd"]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_bad_bn_backward_is_a_clear_error():
    with pytest.raises(ValueError, match=r"bn_backward must be one of \('batch', 'simulated'\), got 'running'"):
        bn_model("running")


def test_the_cli_saves_the_choice(tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--dataset", "synthetic", "--model", "8-6 (F8)", "--epochs", "1", "--batch_size", "64",
            "--threads", "1", "--time-steps", "3", "--bn-backward", "simulated", "--out", str(out)]
    assert main(argv) == 0
    assert json.loads((out / "config.json").read_text())["bn_backward"] == "simulated"
    report = tmp_path / "eval.json"
    assert main(["eval", str(out), "--json", str(report)]) == 0
    (row,) = json.loads(report.read_text())["results"]
    (trained,) = metrics(out)
    assert row["acc"] == trained["test_acc"] and row["loss"] == pytest.approx(trained["test_loss"])
