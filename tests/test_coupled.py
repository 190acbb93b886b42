"""Coupled batches: maps that mix the samples (batch norm with batch statistics in training).

A solver that picks each sample's best iterate from a different iteration returns a batch that
is no iterate at all when the samples are coupled; its reported residuals are then not the
residuals at the returned point. With ``coupled=True`` every solver works on the flattened
batch and returns one iterate, and these tests check the reported residuals against a direct
recomputation at the returned point, and the gradients against a dense full-batch oracle.
"""

import pytest
import torch

import models
import solvers
from solvers import SolverStatus
from tests.helpers import true_residuals

OURS = ["broyden", "anderson", "fixed_point", "neumann", "exact"]
BASELINES = ["torchdeq_broyden", "torchdeq_anderson", "torchdeq_fixed_point_iter"]
OPTIONAL = [name for name in ("gmres",) if name in solvers.available_solvers()]


def coupled_affine_map(batch, dim, norm, seed=0):
    """g(z) = A vec(z) + c with a dense [B·D, B·D] matrix A of spectral norm ``norm``: every sample
    depends on every other; and its solution."""
    generator = torch.Generator().manual_seed(seed)
    n = batch * dim
    a = torch.randn(n, n, generator=generator, dtype=torch.float64)
    a *= norm / torch.linalg.matrix_norm(a, ord=2)
    c = torch.randn(n, generator=generator, dtype=torch.float64)
    solution = torch.linalg.solve(torch.eye(n, dtype=torch.float64) - a, c).reshape(batch, dim)
    return (lambda z: (a @ z.reshape(n) + c).reshape(batch, dim)), solution


@pytest.mark.parametrize("name", OURS + BASELINES + OPTIONAL)
@pytest.mark.parametrize("seed", [1, 3])
def test_reported_residuals_are_true_at_the_returned_batch(name, seed):
    """Every budget of a sweep (the budgets at which per-sample selection goes wrong, see below)."""
    g, solution = coupled_affine_map(6, 5, 0.95, seed=seed)
    for max_iter in [*range(2, 25), 300]:
        result = solvers.get_solver(name)(g, torch.zeros(6, 5, dtype=torch.float64), max_iter=max_iter, tol=1e-10,
                                          coupled=True)
        abs_res, rel_res = true_residuals(g, result.z)
        torch.testing.assert_close(result.abs_residual, abs_res, rtol=1e-9, atol=1e-15)
        torch.testing.assert_close(result.rel_residual, rel_res, rtol=1e-9, atol=1e-15)
        assert bool((result.converged == (result.rel_residual <= 1e-10)).all())
        if result.success:
            torch.testing.assert_close(result.z, solution, rtol=0, atol=1e-7)


@pytest.mark.parametrize("name", ["broyden", "anderson"])
def test_per_sample_selection_on_a_coupled_map_is_what_coupled_prevents(name):
    """Without ``coupled`` the samples' best iterates come from different iterations; somewhere
    in a sweep of budgets that mixture's true residual differs from the reported one. With it,
    never (the test above)."""
    g, _ = coupled_affine_map(6, 5, 0.95, seed=1)
    mismatches = 0
    for max_iter in range(2, 25):
        result = solvers.get_solver(name)(g, torch.zeros(6, 5, dtype=torch.float64), max_iter=max_iter, tol=1e-12)
        _, rel_res = true_residuals(g, result.z)
        mismatches += not torch.allclose(result.rel_residual, rel_res, rtol=1e-6, atol=0)
    assert mismatches > 0


def test_exact_builds_the_whole_batch_jacobian_and_refuses_it_above_its_size_limit():
    g, solution = coupled_affine_map(3, 4, 0.8)
    result = solvers.get_solver("exact")(g, torch.zeros(3, 4, dtype=torch.float64), max_iter=2, tol=1e-12,
                                         coupled=True)
    assert result.success
    torch.testing.assert_close(result.z, solution, rtol=0, atol=1e-12)
    assert result.n_evals == 3 * 4 + 2  # one column per unknown of the batch, then the solve and its check
    with pytest.raises(ValueError, match=r"12 unknowns per sample \(a coupled batch is one sample\).*max_size"):
        solvers.get_solver("exact")(g, torch.zeros(3, 4, dtype=torch.float64), max_iter=2, tol=1e-12,
                                    coupled=True, max_size=11)


def test_coupled_must_be_a_bool():
    g, _ = coupled_affine_map(2, 3, 0.5)
    for name in ("broyden", "torchdeq_broyden"):
        with pytest.raises(TypeError, match="`coupled` must be True or False"):
            solvers.get_solver(name)(g, torch.zeros(2, 3, dtype=torch.float64), max_iter=2, tol=1e-6, coupled="no")


def three_layer_bn_model(b_solver, tol, **options):
    return models.from_spec("5-4-6 (F5)", (4,), 3, dropout=0.0, producer="if", producer_options=dict(time_steps=40),
                            b_solver=b_solver, b_tol=tol, b_max_iter=300, **options)


def test_couples_samples_only_for_batch_statistics_after_the_first_layer(float64):
    torch.manual_seed(0)
    x = torch.randn(3, 4)
    deep = three_layer_bn_model("broyden", 1e-8).network
    shallow = models.from_spec("5 (F5)", (4,), 3, dropout=0.0).network.double()
    no_bn = models.from_spec("5-4 (F5)", (4,), 3, dropout=0.0, batch_norm=False).network.double()
    deep.train()
    args = deep.map_inputs(x)
    assert not deep.couples_samples(*args)  # the simulation's and forward solvers' f: running statistics
    assert deep.couples_samples(*deep.differentiable_args(*args))
    deep.eval()
    assert not deep.couples_samples(*deep.differentiable_args(*deep.map_inputs(x)))
    for net in (shallow.train(), no_bn.train()):
        assert not net.couples_samples(*net.differentiable_args(*net.map_inputs(x)))


def dense_adjoint_gradients(net, classifier, eq, y):
    """∂L/∂θ through the full-batch Jacobian of f at a* (independent of any solver), and ∂L/∂a, J."""
    f_args = net.differentiable_args(*eq.f_args)
    a_leaf = eq.a.clone().requires_grad_()
    (grad_a,) = torch.autograd.grad(torch.nn.functional.cross_entropy(classifier(a_leaf), y), a_leaf)
    n = eq.a.numel()
    jac = torch.autograd.functional.jacobian(lambda z: net.fixed_point_map(z, *f_args), eq.a).reshape(n, n)
    v = torch.linalg.solve(torch.eye(n) - jac.T, grad_a.reshape(n)).reshape(eq.a.shape)
    params = list(net.parameters())
    expected = torch.autograd.grad(net.fixed_point_map(eq.a, *f_args), params, v, allow_unused=True)
    return expected, grad_a, jac


@pytest.mark.parametrize("name", OURS + OPTIONAL + ["torchdeq_broyden"])
@pytest.mark.parametrize("vjp", ["auto", "autograd"])
def test_backward_on_a_batch_norm_network_in_training_is_true(name, vjp, float64):
    """A 3-layer network with batch norm in training: the adjoint couples the samples. The model
    solves it as one problem, so the reported residuals are those at the returned adjoint and the
    parameter gradients are the dense oracle's (errors of 1e-2 to 2e-1 for `exact` before)."""
    torch.manual_seed(0)
    model = three_layer_bn_model(name, 1e-9).train()
    model.adjoint.vjp = vjp
    net = model.network
    x, y = torch.randn(4, 4), torch.tensor([0, 1, 2, 0])
    eq = model.producer(net, x)
    f_args = net.differentiable_args(*eq.f_args)
    assert net.couples_samples(*f_args)
    a = model.adjoint(net.fixed_point_map, eq.a, *f_args, linearize=net.linearized_map, coupled=True)
    params = list(net.parameters())
    got = torch.autograd.grad(torch.nn.functional.cross_entropy(model.classifier(a), y), params, allow_unused=True)
    result = model.adjoint.last_result

    expected, grad_a, jac = dense_adjoint_gradients(net, model.classifier, eq, y)
    v = result.z.reshape(-1)
    image = (jac.T @ v + grad_a.reshape(-1)).reshape(eq.a.shape)
    abs_res = (image - result.z).flatten(1).norm(dim=1)
    torch.testing.assert_close(result.abs_residual, abs_res, rtol=1e-4, atol=1e-14)
    torch.testing.assert_close(result.rel_residual, abs_res / image.flatten(1).norm(dim=1), rtol=1e-4, atol=1e-14)
    if name != "torchdeq_broyden":  # torchdeq's stopping test is not per sample; the residuals are what count
        assert result.status is SolverStatus.SUCCESS, result.summary()
    if result.success:
        for g, e in zip(got, expected):
            if e is None:
                assert g is None or float(g.abs().max()) == 0.0
                continue
            torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-8)


def test_the_model_declares_the_coupling_to_its_backward(float64):
    """Through the public forward: the adjoint solve of a training step on a multi-layer batch-norm
    network runs as one coupled problem (``exact`` then builds a [B·D]² Jacobian: B·D + 2 VJPs)."""
    torch.manual_seed(0)
    model = three_layer_bn_model("exact", 1e-10).train()
    x, y = torch.randn(4, 4), torch.tensor([0, 1, 2, 0])
    torch.nn.functional.cross_entropy(model(x), y).backward()
    assert model.last_backward.n_evals == 4 * 6 + 2
    model.eval()
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    assert model.last_backward.n_evals == 6 + 2  # running statistics: independent samples


@pytest.mark.parametrize("name, max_iter, options", [("phantom", 60, dict(steps=6)), ("phantom", 60, dict(steps=0)),
                                                     ("spide", 40, {})])
def test_fixed_budget_solvers_report_true_residuals_on_a_coupled_batch(name, max_iter, options):
    """phantom and spide run a fixed budget, not the driver's search; their coupled results too
    must carry the residuals measured at the returned batch."""
    g, _ = coupled_affine_map(6, 5, 0.95, seed=1)
    result = solvers.get_solver(name)(g, torch.zeros(6, 5, dtype=torch.float64) + 0.1, max_iter=max_iter, tol=1e-10,
                                      coupled=True, **options)
    abs_res, rel_res = true_residuals(g, result.z)
    torch.testing.assert_close(result.abs_residual, abs_res, rtol=1e-9, atol=1e-15)
    torch.testing.assert_close(result.rel_residual, rel_res, rtol=1e-9, atol=1e-15)
    assert not result.success
    assert result.n_steps == options.get("steps", max_iter)  # phantom: its steps; spide: exactly max_iter
