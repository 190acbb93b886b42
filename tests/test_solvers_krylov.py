"""GMRES against scipy and dense solves; phantom gradients as a fixed budget of damped steps."""

import math

import numpy as np
import pytest
import scipy.sparse.linalg
import torch
from hypothesis import given
from hypothesis import strategies as st

import models
import solvers
from implicit_snn import ImplicitAdjoint
from solvers import SolverStatus
from tests.helpers import DEVICES
from tests.helpers import AffineProblem, affine_problem, relative_error, true_residuals

TINY = 1e-300  # a tolerance no residual meets: a fixed number of steps


class Affine(AffineProblem):
    """``AffineProblem`` by a batched product (einsum's per-call planning dominated these tests)."""

    def __call__(self, z):
        flat = z.reshape(z.shape[0], -1)
        return torch.baddbmm(self.c[:, :, None], self.a, flat[:, :, None])[:, :, 0].reshape(z.shape)

    def linear(self, v):
        flat = v.reshape(v.shape[0], -1)
        return torch.bmm(self.a, flat[:, :, None])[:, :, 0].reshape(v.shape)


def random_problem(batch, dim, radius, *, seed=0, dtype=torch.float64, device="cpu"):
    """g(z) = A z + c with A a non-symmetric Gaussian matrix of spectral radius ``radius``."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(batch, dim, dim, generator=gen, dtype=torch.float64)
    a *= radius / torch.linalg.eigvals(a).abs().amax(dim=1)[:, None, None]
    c = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    return Affine(a.to(dtype=dtype, device=device), c.to(dtype=dtype, device=device), (batch, dim))


def counting(g):
    calls = []

    def counted(z):
        calls.append(1)
        return g(z)

    return counted, calls


def gmres(problem, z0, **kwargs):
    """GMRES on the problem as an ``AffineMap`` (as the backward hands it its adjoint system): A
    applied directly, its own iterates, counts and extrapolated residuals, no final measurement."""
    problem = problem if isinstance(problem, solvers.AffineMap) else problem.declared()
    return solvers.get_solver("gmres")(problem, z0, **kwargs)


# GMRES


@given(dim=st.integers(1, 16), batch=st.integers(1, 3), radius=st.floats(0.05, 0.95), seed=st.integers(0, 2**31 - 1),
       steps=st.integers(1, 16), restart=st.integers(1, 20))
def test_each_gmres_iterate_is_scipys(dim, batch, radius, seed, steps, restart):
    """After k steps within one cycle, every sample's iterate is scipy's k-step GMRES iterate (the
    residual minimiser over x0 + K_k), from a non-zero start on non-symmetric problems."""
    steps = min(steps, restart, dim)
    problem = random_problem(batch, dim, radius, seed=seed)
    z0 = torch.randn(batch, dim, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    result = gmres(problem, z0, max_iter=steps, tol=TINY, return_best=False, restart=restart)
    assert result.n_steps == steps and result.n_evals == steps + 1
    system = np.eye(dim) - problem.a.numpy()
    for i in range(batch):
        expected, _ = scipy.sparse.linalg.gmres(system[i], problem.c[i].numpy(), z0[i].numpy(), rtol=1e-300,
                                                atol=0.0, restart=steps, maxiter=1)
        scale = np.linalg.norm(np.linalg.solve(system[i], problem.c[i].numpy())) + np.linalg.norm(z0[i].numpy())
        np.testing.assert_allclose(result.z[i].numpy(), expected, rtol=0, atol=1e-9 * scale)


@pytest.mark.parametrize("device", DEVICES)
@given(dim=st.integers(1, 24), batch=st.integers(1, 4), radius=st.floats(0.05, 0.95), seed=st.integers(0, 2**31 - 1),
       dtype=st.sampled_from([torch.float64, torch.float32]))
def test_gmres_solves_non_symmetric_problems_to_tolerance(device, dim, batch, radius, seed, dtype):
    problem = random_problem(batch, dim, radius, seed=seed, dtype=dtype, device=device)
    tol = {torch.float64: 1e-11, torch.float32: 2e-5}[dtype]
    result = gmres(problem, problem.zeros(), max_iter=4 * dim + 4, tol=tol)
    assert result.success, result.summary()
    true_abs, true_rel = true_residuals(problem, result.z)
    assert bool((true_rel <= 1.05 * tol).all()), (true_rel, result.rel_residual)
    expected = problem.solution.double()
    condition = torch.linalg.cond(torch.eye(dim, dtype=torch.float64, device=device) - problem.a.double())
    error = (result.z.double() - expected).norm(dim=1) / expected.norm(dim=1)
    assert bool((error <= 2 * condition * tol + 1e2 * torch.finfo(dtype).eps * condition).all())


def test_gmres_is_exact_after_d_steps_where_iteration_is_not(float64):
    """On a D-dimensional problem the Krylov space is everything after D steps (no restart)."""
    dim = 12
    problem = random_problem(3, dim, 0.9, seed=4)
    result = gmres(problem, problem.zeros(), max_iter=dim, tol=1e-15)
    assert result.success and result.n_steps <= dim
    assert relative_error(result.z, problem.solution) < 1e-13
    plain = solvers.get_solver("fixed_point")(problem, problem.zeros(), max_iter=dim, tol=1e-15)
    assert not plain.success and relative_error(plain.z, problem.solution) > 1e-3


def test_gmres_keeps_its_basis_orthogonal_on_a_non_normal_problem(float64):
    """Upper triangular, eigenvalues spread over (−0.9, 0.99): one Gram–Schmidt pass loses
    orthogonality here and needs twice the steps (measured: 157 against 71)."""
    dim = 100
    gen = torch.Generator().manual_seed(0)
    a = torch.triu(0.3 * torch.randn(2, dim, dim, generator=gen), 1) + torch.diag(torch.linspace(-0.9, 0.99, dim))
    problem = Affine(a, torch.randn(2, dim, generator=gen), (2, dim))
    result = gmres(problem, problem.zeros(), max_iter=dim, tol=1e-12, restart=dim)
    assert result.success and result.n_steps < dim, result.summary()
    _, true_rel = true_residuals(problem, result.z)
    assert bool((true_rel <= 1.05e-12).all())


def test_gmres_solves_a_non_contractive_problem_that_iteration_diverges_on(float64):
    problem = random_problem(2, 15, 2.5, seed=5)  # spectral radius 2.5; I − A is nonsingular
    plain = solvers.get_solver("fixed_point")(problem, problem.zeros(), max_iter=200, tol=1e-11)
    assert plain.status is SolverStatus.DIVERGED
    result = gmres(problem, problem.zeros(), max_iter=40, tol=1e-11)
    assert result.success and result.n_steps <= 15
    torch.testing.assert_close(result.z, problem.solution, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("restart", [1, 3, 7, 30])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gmres_reported_residuals_are_the_true_ones_at_every_step(restart, dtype):
    problem = random_problem(3, 20, 0.9, seed=6, dtype=dtype)
    problem.c *= 1e3  # far from unit scale, where an unscaled product would lose digits
    z0 = torch.randn(3, 20, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
    eps = torch.finfo(dtype).eps
    for steps in (1, 2, 3, 4, 5, 7, 8, 9, 16, 20, 21, 29, 30):
        result = gmres(problem, z0, max_iter=steps, tol=TINY, return_best=False, restart=restart)
        true_abs, true_rel = true_residuals(problem, result.z)
        # Both are rounded at the scale of the iterate's image; the residual itself may be smaller.
        slack = 64 * eps * problem(result.z).norm(dim=1)
        error = (result.abs_residual - true_abs).abs()
        assert bool((error <= 1e-6 * true_abs + slack).all()), (steps, result.abs_residual, true_abs)


@pytest.mark.parametrize("scale", [1e-4, 1.0, 1e4])
def test_gmres_float32_accuracy_does_not_depend_on_the_problem_scale(scale):
    problem = random_problem(4, 40, 0.9, seed=7, dtype=torch.float32)
    problem.c *= scale
    z0 = problem.solution + scale * torch.randn(4, 40, generator=torch.Generator().manual_seed(2))
    result = gmres(problem, z0, max_iter=100, tol=2e-5)
    assert result.success, result.summary()
    _, true_rel = true_residuals(problem, result.z)
    assert bool((true_rel <= 1.05 * 2e-5).all())


def test_gmres_counts_every_evaluation_including_restarts(float64):
    problem = random_problem(2, 20, 0.9, seed=8)
    for restart, max_iter in [(3, 17), (30, 12), (5, 6)]:
        g, calls = counting(problem)
        linear, products = counting(problem.linear)
        result = gmres(problem.declared(apply=g, linear=linear), problem.zeros(), max_iter=max_iter, tol=TINY,
                       restart=restart)
        calls = calls + products
        assert result.n_steps == max_iter and result.n_evals == len(calls) == max_iter + 1


def test_gmres_restart_step_measures_the_iterate_and_starts_from_its_true_residual(float64):
    """The step after a cycle keeps z and evaluates g there: its residual is measured, not
    extrapolated, even for a map that is not quite affine (where the extrapolation is off)."""
    base = random_problem(2, 10, 0.8, seed=9)

    def almost_affine(z):
        return base(z) + 1e-3 * torch.sin(z)

    # Declared with the affine part's A: the recurrence extrapolates with it, a restart measures g.
    cycle = gmres(base.declared(apply=almost_affine), base.zeros(), max_iter=4, tol=TINY, return_best=False, restart=4)
    restarted = gmres(base.declared(apply=almost_affine), base.zeros(), max_iter=5, tol=TINY, return_best=False,
                      restart=4)
    assert torch.equal(restarted.z, cycle.z)
    fz = almost_affine(cycle.z) - cycle.z
    measured = fz.norm(dim=1)
    assert not torch.allclose(cycle.abs_residual, measured, rtol=1e-6, atol=0)  # extrapolated: off
    torch.testing.assert_close(restarted.abs_residual, measured, rtol=1e-14, atol=0)


def test_gmres_on_a_map_not_declared_affine_reports_the_residual_measured_at_its_result(float64):
    """Undeclared, the map gets one more evaluation at the returned z, and that measurement alone
    decides: on an affine map it agrees with the recurrence and the solve succeeds; on a nonlinear
    one GMRES's recurrence claims convergence, the measurement refutes it, and the status says so."""
    problem = random_problem(3, 10, 0.8, seed=21)
    g, calls = counting(problem)
    plain = solvers.get_solver("gmres")(g, problem.zeros(), max_iter=40, tol=1e-10)
    declared = gmres(problem, problem.zeros(), max_iter=40, tol=1e-10)
    # Undeclared, A v is a difference of two images; declared, a product: the same Krylov steps.
    assert plain.success and plain.n_steps == declared.n_steps and plain.n_evals == declared.n_evals + 1 == len(calls)
    torch.testing.assert_close(plain.z, declared.z, rtol=1e-9, atol=1e-12)

    def nonlinear(z):
        return torch.tanh(3 * problem(z))

    result = solvers.get_solver("gmres")(nonlinear, problem.zeros(), max_iter=40, tol=1e-6)
    abs_res, rel_res = true_residuals(nonlinear, result.z)
    torch.testing.assert_close(result.abs_residual, abs_res, rtol=1e-12, atol=0)
    torch.testing.assert_close(result.rel_residual, rel_res, rtol=1e-12, atol=0)
    assert bool((rel_res > 1e-6).any())
    assert result.status is SolverStatus.NOT_AFFINE and not result.success
    assert result.converged.tolist() == (rel_res <= 1e-6).tolist()
    # A false declaration (the map's difference from g(0) passed off as its linear part) is believed.
    offset = nonlinear(problem.zeros())
    trusted = gmres(solvers.AffineMap(lambda v: nonlinear(v) - offset, offset, apply=nonlinear), problem.zeros(),
                    max_iter=40, tol=1e-6)
    assert trusted.success


def test_gmres_restart_converges_with_a_small_krylov_space(float64):
    problem = random_problem(3, 20, 0.9, seed=10)
    full = gmres(problem, problem.zeros(), max_iter=500, tol=1e-11)
    small = gmres(problem, problem.zeros(), max_iter=500, tol=1e-11, restart=3)
    assert full.success and small.success
    assert small.n_steps > full.n_steps
    torch.testing.assert_close(small.z, problem.solution, rtol=1e-9, atol=1e-9)


def test_gmres_restarts_after_d_vectors_whatever_restart_says(float64):
    """A D-dimensional Krylov space is the whole space: with restart > D, the step after D
    vectors is the measuring restart (z unchanged), not an Arnoldi step on rounding noise."""
    problem = random_problem(2, 6, 0.9, seed=17)
    problem.c *= 1e3
    cycle = gmres(problem, problem.zeros(), max_iter=6, tol=TINY, return_best=False, restart=30)
    after = gmres(problem, problem.zeros(), max_iter=7, tol=TINY, return_best=False, restart=30)
    assert torch.equal(after.z, cycle.z)
    fz = problem(cycle.z) - cycle.z
    torch.testing.assert_close(after.abs_residual, fz.norm(dim=1), rtol=1e-14, atol=0)


def test_gmres_breakdown_of_one_sample_changes_no_other_sample(float64):
    """Sample 0 breaks down at once (A = ρI: invariant after one vector), sample 1 is singular
    (g(z) = z + c: no fixed point), sample 2 starts at its solution (zero residual), sample 3 is
    an ordinary problem: it gets exactly what it gets alone, and nobody gets NaN."""
    dim = 8
    problem = random_problem(4, dim, 0.9, seed=11)
    eye = torch.eye(dim)
    problem.a[0], problem.a[1], problem.c[1] = 0.5 * eye, eye, 1.0
    z0 = torch.zeros(4, dim)
    z0[2] = torch.arange(dim) / 4.0  # exact in binary, as is the residual computed below
    problem.a[2] = torch.diag(torch.arange(dim) / 16.0)
    problem.c[2] = z0[2] - problem.a[2] @ z0[2]  # an exact zero residual at z0
    alone = Affine(problem.a[3:], problem.c[3:], (1, dim))
    first = gmres(problem, z0, max_iter=1, tol=TINY, return_best=False, restart=6)
    for steps in (1, 2, 5, 6, dim, 20):
        batch = gmres(problem, z0, max_iter=steps, tol=TINY, return_best=False, restart=6)
        single = gmres(alone, z0[3:], max_iter=steps, tol=TINY, return_best=False, restart=6)
        assert bool(torch.isfinite(batch.z).all() & torch.isfinite(batch.abs_residual).all())
        torch.testing.assert_close(batch.z[3:], single.z, rtol=0, atol=1e-13)
        torch.testing.assert_close(batch.z[0], 2 * problem.c[0], rtol=1e-14, atol=1e-14)
        if steps <= 6:  # within the first cycle a broken-down sample does not move at all
            assert torch.equal(batch.z[0], first.z[0])
        assert torch.equal(batch.z[2], z0[2])
        assert float(batch.abs_residual[1]) == pytest.approx(math.sqrt(dim), rel=1e-12)  # honestly not solved
    result = gmres(problem, z0, max_iter=50, tol=1e-10)
    assert result.status is SolverStatus.MAX_ITER
    assert result.converged.tolist() == [True, False, True, True]


@pytest.mark.parametrize("option", [0, -1, 2.5, True, "30"])
def test_gmres_rejects_a_bad_restart_naming_it(option):
    with pytest.raises(ValueError, match="gmres: `restart` must be an int >= 1"):
        solvers.get_solver("gmres").with_options(restart=option)


def test_gmres_solves_a_coupled_batch_as_one_problem(float64):
    """A map that mixes the samples: GMRES runs on the flattened batch, as one Krylov space."""
    problem = random_problem(1, 12, 0.9, seed=12)
    as_batch = Affine(problem.a, problem.c, (1, 12))

    def mixing(z):  # [3, 4] viewed as one 12-vector
        return as_batch(z.reshape(1, 12)).reshape(3, 4)

    result = solvers.get_solver("gmres")(mixing, torch.zeros(3, 4), max_iter=20, tol=1e-12, coupled=True)
    assert result.success and result.n_steps <= 12
    torch.testing.assert_close(result.z.reshape(1, 12), problem.solution, rtol=1e-10, atol=1e-10)


# Phantom


def damped_loop(g, z0, steps, damping):
    z = z0
    for _ in range(steps):
        gz = g(z)
        z = gz if damping == 1.0 else torch.lerp(z, gz, damping)
    return z


@pytest.mark.parametrize("damping", [1.0, 0.5, 0.3])
@pytest.mark.parametrize("steps", [0, 1, 2, 7])
def test_phantom_takes_exactly_k_damped_steps(steps, damping, device):
    problem = affine_problem((3, 6), 0.9, seed=13, device=device)
    z0 = torch.randn(3, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64).to(device)
    g, calls = counting(problem)
    # tol = 1.0 is met at z0 already: the budget is still spent in full.
    result = solvers.get_solver("phantom")(g, z0, max_iter=10, tol=10.0, steps=steps, damping=damping)
    assert result.n_steps == steps and result.n_evals == len(calls) == steps + 1
    assert torch.equal(result.z, damped_loop(problem, z0, steps, damping))
    true_abs, true_rel = true_residuals(problem, result.z)
    torch.testing.assert_close(result.abs_residual, true_abs, rtol=1e-14, atol=0)
    torch.testing.assert_close(result.rel_residual, true_rel, rtol=1e-14, atol=0)
    assert result.success and result.trace.shape == (steps + 1,)


def test_phantom_with_no_steps_returns_z0_itself_and_measures_it(float64):
    problem = affine_problem((2, 5), 0.5, seed=14)
    z0 = torch.randn(2, 5)
    result = solvers.get_solver("phantom")(problem, z0, max_iter=30, tol=1e-6, steps=0)
    assert torch.equal(result.z, z0) and result.n_evals == 1 and result.n_steps == 0
    torch.testing.assert_close(result.abs_residual, (problem(z0) - z0).norm(dim=1), rtol=1e-15, atol=0)
    assert result.status is SolverStatus.BUDGET and not bool(result.converged.any())


def test_phantom_status_judges_the_measured_residual_against_tol(float64):
    problem = affine_problem((2, 10), 0.5, seed=15)
    phantom = solvers.get_solver("phantom")
    loose = phantom(problem, problem.zeros(), max_iter=30, tol=0.1, steps=5)
    tight = phantom(problem, problem.zeros(), max_iter=30, tol=1e-12, steps=5)
    assert torch.equal(loose.z, tight.z) and loose.n_evals == tight.n_evals == 6
    assert loose.status is SolverStatus.SUCCESS and bool(loose.converged.all()) and loose.tol == 0.1
    assert tight.status is SolverStatus.BUDGET and not bool(tight.converged.any()) and tight.tol == 1e-12
    assert torch.equal(tight.converged, tight.rel_residual <= 1e-12)
    with pytest.raises(solvers.ConvergenceError, match="did not converge"):
        phantom(problem, problem.zeros(), max_iter=30, tol=1e-12, steps=5, throw=True)
    phantom(problem, problem.zeros(), max_iter=30, tol=0.1, steps=5, throw=True)  # no error


def test_phantom_keeps_its_budget_when_the_iteration_blows_up():
    problem = affine_problem((2, 3), 1.0, seed=16)
    problem.a = 30.0 * torch.eye(3, dtype=torch.float64).expand(2, 3, 3)  # residual ×29 per step
    result = solvers.get_solver("phantom")(problem, problem.zeros(), max_iter=10, tol=1e-6, steps=6)
    assert result.n_steps == 6 and result.status is SolverStatus.DIVERGED
    assert torch.equal(result.z, damped_loop(problem, problem.zeros(), 6, 1.0))  # the last iterate, not the best
    overflow = solvers.get_solver("phantom")(lambda z: torch.exp(z) * 1e30, torch.zeros(2, 3, dtype=torch.float64),
                                              max_iter=10, tol=1e-6, steps=4)
    assert overflow.status is SolverStatus.NONFINITE


@pytest.mark.parametrize("option, message", [
    ({"steps": -1}, "phantom: `steps` must be an int >= 0"), ({"steps": 2.0}, "phantom: `steps` must be an int"),
    ({"damping": 0.0}, r"phantom: `damping` must be in \(0.0, 1.0\]"), ({"damping": 1.5}, "phantom: `damping`"),
])
def test_phantom_rejects_bad_options_naming_them(option, message):
    with pytest.raises(ValueError, match=message):
        solvers.get_solver("phantom").with_options(**option)


def test_phantom_rejects_calls_that_contradict_its_budget():
    problem = affine_problem((2, 4), 0.5)
    phantom = solvers.get_solver("phantom")
    with pytest.raises(ValueError, match="its option `steps=5` exceeds `max_iter`=3"):
        phantom(problem, problem.zeros(), max_iter=3, tol=1e-6)
    with pytest.raises(ValueError, match="`return_best` must be False"):
        phantom(problem, problem.zeros(), max_iter=10, tol=1e-6, return_best=True)
    with pytest.raises(ValueError, match="unknown option"):
        phantom(problem, problem.zeros(), max_iter=10, tol=1e-6, stesp=3)
    with pytest.raises(ValueError, match="`tol` must be"):
        phantom(problem, problem.zeros(), max_iter=10, tol=0.0)


# Through the backward


def small_model(seed=0, **options):
    torch.manual_seed(seed)
    options = options or dict(producer="lif", producer_options=dict(time_steps=8))
    # eval mode: running batch statistics, so the samples are independent problems
    model = models.from_spec("12 (F12)", (1, 3, 3), 3, dropout=0.0, **options).double().eval()
    x = torch.randn(4, 1, 3, 3, dtype=torch.float64)
    return model, x


def parameter_gradients(model, x, adjoint):
    model.adjoint = adjoint
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 0])).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_gmres_backward_gives_the_exact_solvers_gradients():
    model, x = small_model()
    exact = parameter_gradients(model, x, ImplicitAdjoint("exact", b_max_iter=2, b_tol=1e-12))
    adjoint = ImplicitAdjoint("gmres", b_max_iter=50, b_tol=1e-10)
    got = parameter_gradients(model, x, adjoint)
    assert adjoint.last_result.success and adjoint.last_result.n_steps <= 13
    assert exact.keys() == got.keys() and len(got) > 2
    for name, expected in exact.items():
        torch.testing.assert_close(got[name], expected, rtol=1e-8, atol=1e-12, msg=name)


@pytest.mark.parametrize("steps, damping", [(0, 1.0), (3, 1.0), (4, 0.5)])
def test_phantom_backward_is_backprop_through_damped_steps_after_one_step_of_f(steps, damping):
    """v_k = Mᵏ u + λ Σ_{i<k} Mⁱ u, M = (1−λ)I + λJᵀ, u = ∂L/∂a: the gradient of unrolling
    k damped steps after z = f(a*) (k = 0: the Jacobian-free gradient through f(a*) alone), at
    an exact fixed point a*, where the unrolled steps stay at a* and see its Jacobian."""
    producer = dict(producer="analytic", producer_options=dict(f_tol=1e-14, f_max_iter=200, f_stop_mode="abs"))
    model, x = small_model(seed=1, **producer)
    adjoint = ImplicitAdjoint("phantom", b_tol=1e-6, b_options={"steps": steps, "damping": damping})
    got = parameter_gradients(model, x, adjoint)

    net = model.network
    eq = model.producer(net, x)
    args = net.differentiable_args(*eq.f_args)
    z = net.fixed_point_map(eq.a.detach(), *args)
    for _ in range(steps):
        z = torch.lerp(z, net.fixed_point_map(z, *args), damping)
    unrolled = eq.a.detach() + (z - z.detach())  # a*'s value, the unrolled steps' gradient
    model.zero_grad()
    torch.nn.functional.cross_entropy(model.classifier(unrolled.flatten(1)), torch.tensor([0, 1, 2, 0])).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(got[name], p.grad, rtol=1e-10, atol=1e-13, msg=name)
