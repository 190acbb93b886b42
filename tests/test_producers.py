"""The analytic producer finds the fixed point of f, and its equilibrium carries implicit gradients."""

import pytest
import torch

from implicit_snn import implicit_grad, producers
from tests.helpers import TanhNetwork, relative_error


@pytest.mark.parametrize("f_solver", ["broyden", "anderson", "fixed_point", "torchdeq_broyden"])
def test_analytic_equilibrium_satisfies_the_fixed_point_equation(f_solver, device):
    net = TanhNetwork(40, 10, norm=0.9, seed=2).to(device)
    x = torch.randn(4, 10, device=device)
    producer = producers.get_producer("analytic", f_solver=f_solver, f_max_iter=300, f_tol=1e-5)
    eq = producer(net, x)
    with torch.no_grad():
        fa = net(eq.a, *eq.f_args)
    rel = (fa - eq.a).norm(dim=1) / fa.norm(dim=1)
    assert bool((rel <= 1e-5).all())
    assert eq.stats["forward_status"] == "SUCCESS"
    assert eq.stats["forward_converged_fraction"] == 1.0
    assert not eq.a.requires_grad


def test_analytic_producer_then_implicit_grad_gives_the_dense_gradient(float64):
    net = TanhNetwork(30, 6, norm=0.9, seed=8)
    x = torch.randn(3, 6)
    eq = producers.get_producer("analytic", f_tol=1e-13, f_max_iter=200, f_stop_mode="abs")(net, x)
    grad_a = torch.randn(3, 30)
    out = implicit_grad(net.fixed_point_map, eq.a, *eq.f_args, b_tol=1e-12, b_max_iter=100)
    got = torch.autograd.grad((out * grad_a).sum(), (net.weight, net.input_weight, net.bias))
    for actual, expected in zip(got, net.dense_implicit_grads(eq.a, x, grad_a)):
        assert relative_error(actual, expected) < 1e-8


def test_analytic_producer_reports_a_forward_that_did_not_converge():
    net = TanhNetwork(20, 4, norm=0.99, seed=9)
    eq = producers.get_producer("analytic", f_solver="fixed_point", f_max_iter=2, f_tol=1e-8)(net, torch.randn(2, 4))
    assert eq.stats["forward_status"] == "MAX_ITER"
    assert eq.stats["forward_converged_fraction"] < 1.0
