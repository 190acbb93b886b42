"""Building blocks: initialisation, variational dropout, the spectral-norm constraint, batch-norm modes."""

import pytest
import torch
from torch import nn

from implicit_snn import BNMode, SpectralNorm, SynapticLayer


@pytest.mark.parametrize("op, out_dim", [
    (nn.Linear(30, 20), 0), (nn.Conv2d(3, 8, 5), 0), (nn.ConvTranspose2d(8, 4, 3, 2, 1, 1), 1),
])
def test_initialisation_gives_each_output_unit_a_unit_norm_fan_in_and_zero_bias(op, out_dim):
    layer = SynapticLayer(op)
    weight = layer.op.weight
    reduce = [d for d in range(weight.dim()) if d != out_dim]
    torch.testing.assert_close(torch.linalg.vector_norm(weight, dim=reduce), torch.ones(weight.shape[out_dim]))
    assert weight.min().item() < 0 < weight.max().item()
    assert layer.op.bias is None or layer.op.bias.abs().max().item() == 0.0


def test_variational_dropout_mask_values_and_scaling():
    layer = SynapticLayer(nn.Linear(4, 1000), dropout=0.2).train()
    mask = layer.sample_mask((64, 1000), like=torch.zeros(1))
    values = mask.unique().tolist()
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(1.25)
    assert abs(float((mask == 0).float().mean()) - 0.2) < 0.01
    assert abs(float(mask.mean()) - 1.0) < 0.02
    layer.eval()
    assert layer.sample_mask((2, 1000), like=torch.zeros(1)) is None
    with pytest.raises(ValueError, match="dropout must be in"):
        SynapticLayer(nn.Linear(2, 2), dropout=1.0)


def test_alpha_starts_at_the_bound_and_receives_gradient_from_the_first_step():
    torch.manual_seed(0)
    layer = SynapticLayer(nn.Linear(400, 400, bias=False), spectral=SpectralNorm(1.0))
    # U(−1,1) rows of unit norm have a spectral norm near 2 (the reference's α started at 1.96).
    assert layer.spectral.alpha.item() == 1.0
    weight = layer.effective_weight(update=True)
    weight.sum().backward()
    assert layer.spectral.alpha.grad is not None and float(layer.spectral.alpha.grad.abs()) > 0


def test_alpha_init_norm_reproduces_the_reference_frozen_start():
    """``alpha_init="norm"``: α = ‖W_init‖₂ above the clip, so the same W_eff but no gradient to α (B11)."""
    weights = {}
    for start in ("bound", "norm"):
        torch.manual_seed(0)
        layer = SynapticLayer(nn.Linear(400, 400, bias=False), spectral=SpectralNorm(1.0, alpha_init=start))
        weights[start] = layer.effective_weight(update=False)
        weights[start].sum().backward()
        weights[start + " grad"] = layer.spectral.alpha.grad
        weights[start + " alpha"] = layer.spectral.alpha.item()
    true_norm = float(torch.linalg.matrix_norm(layer.op.weight.detach(), 2))
    assert abs(weights["norm alpha"] - true_norm) < 1e-3 * true_norm and weights["norm alpha"] > 1.5
    torch.testing.assert_close(weights["norm"], weights["bound"])
    assert float(weights["norm grad"]) == 0.0 and float(weights["bound grad"].abs()) > 0


def test_spectral_norm_matches_the_true_norm_and_eval_does_not_advance_the_power_iteration():
    torch.manual_seed(1)
    layer = SynapticLayer(nn.Linear(50, 50, bias=False), spectral=SpectralNorm(0.8))
    weight = layer.effective_weight(update=True).detach()
    assert abs(float(torch.linalg.matrix_norm(weight, 2)) - 0.8) < 1e-3
    u = layer.spectral.u.clone()
    layer.eval()
    first = layer.effective_weight(update=False)
    second = layer.effective_weight(update=False)
    assert torch.equal(first, second) and torch.equal(layer.spectral.u, u)


def test_spectral_norm_state_survives_a_state_dict_round_trip():
    torch.manual_seed(2)
    a = SynapticLayer(nn.Conv2d(4, 4, 3, 1, 1, bias=False), spectral=SpectralNorm(1.0, operator_norm=True, input_shape=(4, 6, 6)))
    a.effective_weight(update=True)
    b = SynapticLayer(nn.Conv2d(4, 4, 3, 1, 1, bias=False), spectral=SpectralNorm(1.0, operator_norm=True, input_shape=(4, 6, 6)))
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.effective_weight(update=False), b.effective_weight(update=False))


def test_bad_spectral_settings():
    with pytest.raises(ValueError, match="needs the layer's per-sample `input_shape`"):
        SpectralNorm(1.0, operator_norm=True)
    with pytest.raises(ValueError, match="`bound` must be > 0"):
        SpectralNorm(0.0)
    with pytest.raises(ValueError, match="`alpha_init` must be one of"):
        SpectralNorm(1.0, alpha_init="one")
    with pytest.raises(ValueError, match=r"bn_momentum must be in \(0, 1\]"):
        SynapticLayer(nn.Linear(3, 4), batch_norm=True, bn_momentum=0.0)


def test_batch_norm_modes():
    torch.manual_seed(3)
    layer = SynapticLayer(nn.Linear(3, 4), batch_norm=True).train()
    x = torch.randn(8, 3)
    mean, var = layer.batch_statistics(x)
    given = layer(x, bn_mode=BNMode.GIVEN, stats=(mean, var))
    assert int(layer.bn.num_batches_tracked) == 0
    batch = layer(x, bn_mode=BNMode.BATCH)
    assert int(layer.bn.num_batches_tracked) == 1
    torch.testing.assert_close(given, batch)
    running = layer(x, bn_mode=BNMode.RUNNING)
    expected = (layer.linear(x) - layer.bn.running_mean) / torch.sqrt(layer.bn.running_var + layer.bn.eps)
    torch.testing.assert_close(running, expected * layer.bn.weight + layer.bn.bias)
    layer.eval()
    with pytest.raises(RuntimeError, match="needs the layer in training mode"):
        layer(x, bn_mode=BNMode.BATCH)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rate_function_equals_clamp_in_value_and_gradient_including_the_bounds(dtype):
    from implicit_snn.neurons import rate_function

    vth = torch.tensor(2.0, dtype=dtype)
    x = torch.cat([torch.tensor([-1.0, 0.0, 2.0, 4.0, 1e-30], dtype=dtype), 3 * torch.randn(200, dtype=dtype)])
    grad = torch.randn_like(x)
    ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    y = rate_function(ours, vth)
    y.backward(grad)
    expected = torch.clamp(theirs / vth, 0.0, 1.0)
    expected.backward(grad)
    assert torch.equal(y, expected) and torch.equal(ours.grad, theirs.grad)
    assert ours.grad[1] == 0 and ours.grad[2] == 0  # exactly at 0 and at Vth: no gradient, as clamp
    with torch.no_grad():
        assert torch.equal(rate_function(x, vth), expected.detach())
