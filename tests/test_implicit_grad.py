"""implicit_grad against the dense implicit-function-theorem gradient, finite differences and gradcheck."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import solvers
from implicit_snn import ImplicitAdjoint, implicit_grad
from tests.helpers import DEVICES
from tests.helpers import TanhNetwork, default_dtype, relative_error

BACKWARDS = {  # solver: settings that are "enough iterations" for ‖J‖ ≤ 0.9 at tol 1e-12
    "broyden": dict(b_max_iter=100),
    "anderson": dict(b_max_iter=200),
    "fixed_point": dict(b_max_iter=400),
    "neumann": dict(b_max_iter=200),
    "exact": dict(b_max_iter=2),
    "torchdeq_broyden": dict(b_max_iter=100),
    "torchdeq_anderson": dict(b_max_iter=400, b_options={"lam": 1e-14}),
    "torchdeq_fixed_point_iter": dict(b_max_iter=400),
}


def equilibrium(net, x, tol=1e-13):
    with torch.no_grad():
        result = solvers.get_solver("broyden")(
            lambda a: net(a, x), net.initial_state(x), max_iter=500, tol=tol, stop_mode="abs")
    assert result.success
    return result.z


@pytest.mark.parametrize("dim", [50, 400])
@pytest.mark.parametrize("b_solver", sorted(BACKWARDS))
def test_parameter_gradients_match_dense_implicit_function_theorem(b_solver, dim, float64, device):
    net = TanhNetwork(dim, 20, norm=0.9, seed=dim).to(device)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 20, generator=gen).to(device)
    grad_a = torch.randn(4, dim, generator=gen).to(device)
    a_star = equilibrium(net, x)
    expected = net.dense_implicit_grads(a_star, x, grad_a)

    settings = dict(BACKWARDS[b_solver])
    if b_solver == "neumann":  # exactly 200 terms, however small the residual gets
        settings["b_tol"] = 1e-300
    results = []
    out = implicit_grad(net, a_star, x, b_solver=b_solver, **{"b_tol": 1e-12, "on_backward": results.append, **settings})
    got = torch.autograd.grad((out * grad_a).sum(), (net.weight, net.input_weight, net.bias))
    for actual, reference in zip(got, expected):
        assert relative_error(actual, reference) < 1e-6
    assert len(results) == 1
    if b_solver == "neumann":
        assert results[0].n_steps == 200
    else:
        assert results[0].success, results[0].summary()


def test_value_is_the_producers_not_f_of_it(float64):
    net = TanhNetwork(8, 3)
    x = torch.randn(2, 3)
    a_rough = equilibrium(net, x, tol=1e-2) + 0.01  # deliberately not a fixed point
    out = implicit_grad(net, a_rough, x)
    assert torch.equal(out, a_rough)
    assert not torch.equal(out, net(a_rough, x))


@pytest.mark.parametrize("device", DEVICES)
@given(seed=st.integers(0, 2**31 - 1), dim=st.integers(1, 6), in_dim=st.integers(1, 4),
       norm=st.floats(0.1, 0.9))
def test_gradient_matches_central_differences_of_the_fixed_point(device, seed, dim, in_dim, norm):
    with default_dtype(torch.float64):
        check_central_differences(seed, dim, in_dim, norm, device)


def check_central_differences(seed, dim, in_dim, norm, device):
    net = TanhNetwork(dim, in_dim, norm=norm, seed=seed, symmetric=bool(seed % 2)).to(device)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(3, in_dim, generator=gen).to(device)
    weights = torch.randn(3, dim, generator=gen).to(device)
    direction = torch.randn(dim, in_dim, generator=gen).to(device)

    def loss_at(input_weight):
        with torch.no_grad():
            net.input_weight.copy_(input_weight)
            return float((equilibrium(net, x) * weights).sum())

    base = net.input_weight.detach().clone()
    eps = 1e-6
    numeric = (loss_at(base + eps * direction) - loss_at(base - eps * direction)) / (2 * eps)
    with torch.no_grad():
        net.input_weight.copy_(base)
    out = implicit_grad(net, equilibrium(net, x), x, b_tol=1e-13, b_max_iter=200)
    (grad,) = torch.autograd.grad((out * weights).sum(), net.input_weight)
    analytic = float((grad * direction).sum())
    assert abs(analytic - numeric) <= 1e-6 * max(1.0, abs(numeric))


@pytest.mark.parametrize("b_solver", ["broyden", "anderson"])
def test_gradcheck_through_the_solved_equilibrium(b_solver, float64):
    net = TanhNetwork(5, 3, norm=0.8, seed=3)

    def layer(x):
        return implicit_grad(net, equilibrium(net, x), x, b_solver=b_solver, b_tol=1e-13, b_max_iter=100)

    x = torch.randn(2, 3, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_gradient_does_not_depend_on_how_the_equilibrium_was_found(float64):
    net = TanhNetwork(30, 5, seed=4)
    x = torch.randn(3, 5)
    grads = []
    for producer in ("broyden", "anderson", "exact"):
        with torch.no_grad():
            a_star = solvers.get_solver(producer)(lambda a: net(a, x), net.initial_state(x),
                                                  max_iter=300, tol=1e-13, stop_mode="abs").z
        out = implicit_grad(net, a_star, x, b_tol=1e-13, b_max_iter=100)
        grads.append(torch.autograd.grad(out.square().sum(), net.weight)[0])
    for other in grads[1:]:
        assert relative_error(other, grads[0]) < 1e-9


def test_solve_takes_vjps_wrt_a_only_and_the_graph_is_built_once_and_freed(float64):
    net = TanhNetwork(10, 4, seed=5)
    calls = []
    net.register_forward_hook(lambda *_: calls.append(1))
    x = torch.randn(2, 4)
    a_star = equilibrium(net, x)
    calls.clear()

    adjoint = ImplicitAdjoint("broyden", b_max_iter=50, b_tol=1e-12)
    seen_during_solve = []

    def map_watching_parameter_grads(a, x):
        return net(a, x)

    out = adjoint(map_watching_parameter_grads, a_star, x)
    loss = out.square().sum()
    original = adjoint.solve_adjoint

    def watch(fz, z, grad, jt=None, coupled=False):
        assert jt is None  # a plain callable f has no explicit operator: VJPs of its graph
        assert coupled is False
        v = original(fz, z, grad, jt, coupled)
        seen_during_solve.append(net.weight.grad)  # still None: the solve never touched it
        return v

    adjoint.solve_adjoint = watch
    loss.backward()
    assert calls == [1]  # one evaluation of f, in the forward
    assert seen_during_solve == [None]
    expected = net.dense_implicit_grads(a_star, x, 2 * a_star)[0]  # loss = ‖a‖²: ∂L/∂a = 2a
    assert relative_error(net.weight.grad, expected) < 1e-9
    assert adjoint.last_result is not None and adjoint.last_result.success
    assert adjoint.last_result.n_evals >= 2
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        loss.backward()


def test_gradients_reach_args_that_require_grad(float64):
    net = TanhNetwork(6, 3, seed=6)
    x = torch.randn(2, 3, requires_grad=True)
    a_star = equilibrium(net, x.detach())
    grad_a = torch.randn(2, 6)
    out = implicit_grad(net, a_star, x, b_tol=1e-13, b_max_iter=100)
    (gx,) = torch.autograd.grad((out * grad_a).sum(), x)
    expected = net.dense_implicit_grads(a_star, x.detach(), grad_a)[3]
    assert relative_error(gx, expected) < 1e-9


def test_no_grad_mode_returns_a_star_without_calling_f(float64):
    def f(a, x):
        raise AssertionError("f must not run without grad")

    a_star = torch.rand(2, 3)
    with torch.no_grad():
        assert torch.equal(implicit_grad(f, a_star, None), a_star)


def test_backward_non_convergence_is_reported(float64):
    """An expanding map: the adjoint system is solvable but plain iteration cannot get there."""
    weight = torch.nn.Parameter(1.5 * torch.eye(4))

    def f(a, x):
        return a @ weight.T + x

    results = []
    a_star = torch.zeros(2, 4)
    out = implicit_grad(f, a_star, torch.ones(2, 4), b_solver="fixed_point", b_max_iter=20, on_backward=results.append)
    out.sum().backward()
    assert not results[0].success
    assert results[0].status.name in ("DIVERGED", "MAX_ITER", "NONFINITE")


def test_bad_settings_fail_before_any_work():
    with pytest.raises(KeyError, match="known solvers"):
        ImplicitAdjoint("broydn")
    with pytest.raises(ValueError, match="unknown option"):
        ImplicitAdjoint("anderson", b_options={"mem": 5})
    with pytest.raises(ValueError, match="`b_tol`"):
        ImplicitAdjoint("anderson", b_tol=-1.0)
    with pytest.raises(ValueError, match="shaped like a"):
        implicit_grad(lambda a, x: a[:, :1] * x, torch.zeros(2, 3), torch.ones(2, 1, requires_grad=True))
