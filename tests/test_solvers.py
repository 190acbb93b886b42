"""Every registered solver against the dense oracle, and the driver's honesty guarantees."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import solvers
from solvers import SolverStatus
from tests.helpers import DEVICES
from tests.helpers import affine_problem, true_residuals

OURS = ["broyden", "anderson", "fixed_point", "neumann", "exact", "gmres"]
BASELINES = ["torchdeq_broyden", "torchdeq_anderson", "torchdeq_fixed_point_iter"]
ALL = OURS + BASELINES
TOL = {torch.float64: 1e-11, torch.float32: 2e-5}

shapes = st.one_of(
    st.tuples(st.integers(1, 4), st.integers(1, 8)),
    st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)),
    st.tuples(st.integers(1, 2), st.integers(1, 2), st.integers(1, 3), st.integers(1, 2)),
)
dtypes = st.sampled_from([torch.float64, torch.float32])


def error_bound(result, norm):
    """‖z − z*‖ ≤ ‖(I − A)⁻¹‖ ‖g(z) − z‖ ≤ abs_residual / (1 − ‖A‖), per sample."""
    return result.abs_residual / (1 - norm)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ALL)
@given(shape=shapes, norm=st.floats(0.05, 0.9), seed=st.integers(0, 2**31 - 1), dtype=dtypes,
       symmetric=st.booleans())
def test_solver_agrees_with_dense_solution(name, device, shape, norm, seed, dtype, symmetric):
    problem = affine_problem(shape, norm, seed=seed, dtype=dtype, symmetric=symmetric, device=device)
    tol = TOL[dtype]
    result = solvers.get_solver(name)(problem, problem.zeros(), max_iter=400, tol=tol, stop_mode="rel")
    if name in OURS:
        assert result.status is SolverStatus.SUCCESS, result.summary()
    if result.status is SolverStatus.SUCCESS:
        assert bool((result.rel_residual <= tol).all())
        error = (result.z - problem.solution).reshape(shape[0], -1).norm(dim=1)
        # The oracle has rounding error too: about eps times the condition number (1 + ‖A‖)/(1 − ‖A‖).
        condition = (1 + norm) / (1 - norm)
        slack = 8 * condition * torch.finfo(dtype).eps * problem.solution.reshape(shape[0], -1).norm(dim=1)
        assert bool((error <= 1.01 * error_bound(result, norm) + slack).all()), (error, error_bound(result, norm))
    assert result.z.shape == problem.zeros().shape and result.z.dtype == dtype
    assert result.z.device.type == device


@pytest.mark.parametrize("name", ALL)
def test_reported_residuals_and_evaluations_are_true(name, device):
    problem = affine_problem((3, 5, 4), 0.8, seed=1, device=device, symmetric=True)
    calls = []

    def g(z):
        calls.append(1)
        return problem(z)

    result = solvers.get_solver(name)(g, problem.zeros(), max_iter=60, tol=1e-9, stop_mode="abs")
    assert result.n_evals == len(calls)
    true_abs, true_rel = true_residuals(problem, result.z)
    torch.testing.assert_close(result.abs_residual, true_abs, rtol=1e-6, atol=1e-14)
    torch.testing.assert_close(result.rel_residual, true_rel, rtol=1e-6, atol=1e-14)
    assert torch.equal(result.converged, result.abs_residual <= 1e-9)
    assert result.z.device.type == device.type


@pytest.mark.parametrize("name", OURS)
def test_samples_are_independent_problems(name, float64):
    """Solving a batch gives each sample what solving it alone gives (same evaluations aside)."""
    problem = affine_problem((4, 30), 0.85, seed=3, symmetric=True)
    batch = solvers.get_solver(name)(problem, problem.zeros(), max_iter=300, tol=1e-12, stop_mode="abs")
    for i in range(4):
        single = affine_problem((4, 30), 0.85, seed=3, symmetric=True)
        single.a, single.c, single.shape = problem.a[i:i + 1], problem.c[i:i + 1], (1, 30)
        alone = solvers.get_solver(name)(single, single.zeros(), max_iter=300, tol=1e-12, stop_mode="abs")
        torch.testing.assert_close(batch.z[i:i + 1], alone.z, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", ALL)
def test_map_without_fixed_point_is_reported_not_returned_as_success(name, device):
    def shift(z):
        return z + 1.0

    z0 = torch.zeros(2, 10, dtype=torch.float64, device=device)
    result = solvers.get_solver(name)(shift, z0, max_iter=50, tol=1e-8)
    assert result.status in (SolverStatus.DIVERGED, SolverStatus.NONFINITE, SolverStatus.MAX_ITER)
    assert not bool(result.converged.any())
    assert not bool((result.abs_residual <= 0.5).any())  # NaN (torchdeq_broyden) is not small either
    with pytest.raises(solvers.ConvergenceError, match="did not converge"):
        solvers.get_solver(name)(shift, z0, max_iter=50, tol=1e-8, throw=True)


@pytest.mark.parametrize("name", OURS + BASELINES)
def test_expanding_map_fails_plain_iteration_and_root_finders_report_truly(name, device):
    """z = 1.5 z + c has a fixed point that iteration cannot reach; any reported success must be it."""
    problem = affine_problem((2, 10), 1.0, seed=4, device=device)
    problem.a = 1.5 * torch.eye(10, dtype=torch.float64, device=device).expand(2, 10, 10)
    result = solvers.get_solver(name)(problem, problem.zeros(), max_iter=100, tol=1e-8)
    if name in ("fixed_point", "neumann", "torchdeq_fixed_point_iter"):
        assert not result.success and not bool(result.converged.any())
    if result.success:
        torch.testing.assert_close(result.z, problem.solution, rtol=1e-6, atol=1e-8)


def test_growth_beyond_divergence_factor_is_diverged():
    problem = affine_problem((2, 3), 1.0, seed=5)
    problem.a = 3.0 * torch.eye(3, dtype=torch.float64).expand(2, 3, 3)
    result = solvers.get_solver("fixed_point")(problem, problem.zeros(), max_iter=1000, tol=1e-8)
    assert result.status is SolverStatus.DIVERGED
    assert result.n_steps < 30  # stopped once every sample had diverged, not at max_iter


def test_overflow_is_nonfinite_and_the_best_finite_iterate_is_kept():
    def g(z):
        return torch.exp(z) * 1e30

    z0 = torch.zeros(2, 3, dtype=torch.float64)
    result = solvers.get_solver("fixed_point")(g, z0, max_iter=20, tol=1e-8, divergence_factor=math.inf)
    assert result.status is SolverStatus.NONFINITE
    assert bool(torch.isfinite(result.z).all())


def test_max_iter_status_when_too_few_steps():
    problem = affine_problem((2, 20), 0.95, seed=6, symmetric=True)
    result = solvers.get_solver("fixed_point")(problem, problem.zeros(), max_iter=5, tol=1e-10)
    assert result.status is SolverStatus.MAX_ITER
    assert result.n_steps == 5 and result.n_evals == 6
    assert result.trace.shape == (6,)
    assert bool((result.trace[1:] <= result.trace[:-1]).all())  # best-so-far never gets worse


@pytest.mark.parametrize("name", ALL)
def test_non_finite_input_is_a_clear_error(name):
    problem = affine_problem((2, 4), 0.5)
    z0 = problem.zeros()
    z0[1, 2] = float("nan")
    with pytest.raises(ValueError, match="`z0` contains NaN or Inf"):
        solvers.get_solver(name)(problem, z0, max_iter=10, tol=1e-6)
    with pytest.raises(ValueError, match="returned NaN or Inf at the initial guess"):
        solvers.get_solver(name)(lambda z: z + float("inf"), problem.zeros(), max_iter=10, tol=1e-6)


@pytest.mark.parametrize("name", ALL)
def test_bad_calls_are_rejected(name):
    solver = solvers.get_solver(name)
    problem = affine_problem((2, 4), 0.5)
    with pytest.raises(ValueError, match="batched with shape"):
        solver(problem, torch.zeros(4, dtype=torch.float64), max_iter=10, tol=1e-6)
    with pytest.raises(ValueError, match="`tol` must be"):
        solver(problem, problem.zeros(), max_iter=10, tol=0.0)
    with pytest.raises(ValueError, match="`stop_mode` must be one of"):
        solver(problem, problem.zeros(), max_iter=10, tol=1e-6, stop_mode="max")
    with pytest.raises(ValueError, match="shaped like its input"):
        solver(lambda z: z[:, :2], problem.zeros(), max_iter=10, tol=1e-6)
    with pytest.raises(ValueError, match="unknown option"):
        solver(problem, problem.zeros(), max_iter=10, tol=1e-6, dampnig=0.5)


@pytest.mark.parametrize("name, option", [
    ("fixed_point", {"damping": 0.0}), ("fixed_point", {"damping": 1.5}), ("anderson", {"memory": 0}),
    ("anderson", {"regularization": -1.0}), ("broyden", {"memory": 0}), ("neumann", {"damping": 2.0}),
    ("exact", {"max_size": 0}),
])
def test_bad_option_values_fail_with_the_option_named(name, option):
    key = next(iter(option))
    with pytest.raises(ValueError, match=f"`{key}`"):
        solvers.get_solver(name).with_options(**option)


def test_exact_refuses_problems_above_its_size_limit():
    problem = affine_problem((1, 20), 0.5)
    with pytest.raises(ValueError, match="max_size"):
        solvers.get_solver("exact")(problem, problem.zeros(), max_iter=1, tol=1e-6, max_size=10)


def test_damped_fixed_point_converges_where_plain_iteration_cannot(float64):
    """Eigenvalue −1.5: plain iteration diverges, β = 0.3 contracts (|1 − β·2.5| = 0.25)."""
    problem = affine_problem((1, 3), 1.0)
    problem.a = -1.5 * torch.eye(3).expand(1, 3, 3)
    plain = solvers.get_solver("fixed_point")(problem, problem.zeros(), max_iter=200, tol=1e-10)
    damped = solvers.get_solver("fixed_point")(problem, problem.zeros(), max_iter=200, tol=1e-10, damping=0.3)
    assert not plain.success and damped.success
    torch.testing.assert_close(damped.z, problem.solution, rtol=1e-9, atol=1e-12)


def test_neumann_sums_exactly_max_iter_terms(float64):
    """After k steps the Neumann sum is Σ_{j<k} Aʲ c, in closed form for A = ρI."""
    problem = affine_problem((2, 3), 1.0)
    rho = 0.5
    problem.a = rho * torch.eye(3).expand(2, 3, 3)
    for k in (1, 2, 7):
        result = solvers.get_solver("neumann")(problem, problem.zeros(), max_iter=k, tol=1e-300)
        expected = problem.c * (1 - rho ** k) / (1 - rho)
        torch.testing.assert_close(result.z, expected, rtol=1e-14, atol=1e-14)


def test_anderson_relative_regularisation_keeps_acceleration_at_tight_tolerance(float64):
    """torchdeq's fixed λ = 1e-4 degrades Anderson to plain iteration at tight tolerances; ours must not."""
    problem = affine_problem((4, 100), 0.95, seed=7, symmetric=True)
    ours = solvers.get_solver("anderson")(problem, problem.zeros(), max_iter=2000, tol=1e-10)
    plain = solvers.get_solver("fixed_point")(problem, problem.zeros(), max_iter=2000, tol=1e-10)
    baseline = solvers.get_solver("torchdeq_anderson")(problem, problem.zeros(), max_iter=2000, tol=1e-10)
    assert ours.success and plain.success and baseline.success
    assert ours.n_evals < plain.n_evals / 2  # measured: 152 against 389
    assert ours.n_evals < baseline.n_evals / 3  # measured: 152 against 1051


def test_anderson_singular_fallback_takes_the_newest_iterate_of_the_ring():
    # A sample whose history has no usable residuals (all zero) falls back to a plain step from
    # the newest iterate; once the ring buffer has wrapped, that is not the last slot.
    anderson = solvers.get_solver("anderson")
    res = torch.zeros(2, 6, 5)
    res[1] = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    weights = anderson._mixing_weights(res @ res.transpose(1, 2), newest=2)
    assert torch.equal(weights[0], torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0, 0.0]))
    assert weights[1].sum().item() == pytest.approx(1.0) and torch.isfinite(weights[1]).all()
