"""The driver's bookkeeping against brute force, and the solvers' iterates against dense references."""

import dataclasses
import math

import pytest
import torch

import solvers
from solvers import FixedPointSolver, IterState, SolverStatus
from solvers import _driver, _maps, _workspace
from tests.helpers import affine_problem


@dataclasses.dataclass
class _ScriptState(IterState):
    k: int = 0


@dataclasses.dataclass(frozen=True)
class Scripted(FixedPointSolver):
    """Proposes a fixed list of iterates, whatever g says: the driver alone picks among them."""

    iterates: tuple = ()

    def init(self, g, z0, gz0):
        return _ScriptState(z0, gz0, k=0)

    def step(self, g, state):
        z = self.iterates[state.k].clone()
        return _ScriptState(z, g(z), k=state.k + 1)


def half_map(c):
    """g(z) = z / 2 + c, fixed point 2c; the residual of z = 2c + e·d is ‖e·d‖ / 2."""
    return lambda z: 0.5 * z + c


def scripted_iterates(c, errors):
    """Per step k, per sample b, the iterate 2c + errors[k][b] · d."""
    d = torch.linspace(1.0, 2.0, c.shape[1], dtype=c.dtype)
    return tuple(2 * c + torch.tensor(row, dtype=c.dtype)[:, None] * d for row in errors)


def brute_force_best(g, iterates, stop_mode):
    """Per sample the iterate of lowest residual (earliest on ties, NaN never), and its residuals."""
    abs_all, rel_all = [], []
    for z in iterates:
        gz = g(z)
        abs_res = (gz - z).norm(dim=1)
        abs_all.append(abs_res)
        rel_all.append(abs_res / gz.norm(dim=1))
    abs_all, rel_all = torch.stack(abs_all), torch.stack(rel_all)
    key = (rel_all if stop_mode == "rel" else abs_all).nan_to_num(nan=math.inf)
    index = key.argmin(dim=0)  # argmin returns the first minimum: the earliest iterate wins ties
    rows = torch.arange(key.shape[1])
    z = torch.stack(iterates)[index, rows]
    return z, abs_all[index, rows], rel_all[index, rows]


# Sample 0 improves monotonically, sample 1 is best in the middle, sample 2 goes NaN after its
# best, sample 3 gets worse from the start (its best is z0), sample 4 ties its best later.
ERRORS = [
    [0.8, 0.1, 0.9, 1.5, 0.5],
    [0.4, 0.5, 0.3, 2.0, 0.9],
    [0.2, 0.05, float("nan"), 3.0, 0.5],
    [0.1, 0.3, float("nan"), 4.0, 0.7],
    [0.05, 0.2, 0.2, 5.0, 0.9],
]


@pytest.fixture(params=["sync-free cpu", "syncs only at checks"])
def sync_mode(request, monkeypatch):
    """Both ways of deciding the [B, D] best-iterate selection: every step, or at checks only."""
    if request.param == "syncs only at checks":
        monkeypatch.setattr(_driver, "SYNC_FREE_DEVICES", ())
    return request.param


@pytest.mark.parametrize("check_every", [1, 2, 3])
@pytest.mark.parametrize("stop_mode", ["abs", "rel"])
def test_best_iterate_is_the_per_sample_argmin_over_all_iterates(check_every, stop_mode, sync_mode):
    c = torch.randn(5, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    g = half_map(c)
    z0 = 2 * c + torch.linspace(1.0, 2.0, 6, dtype=torch.float64)  # error 1 for every sample
    iterates = scripted_iterates(c, ERRORS)
    result = Scripted(iterates=iterates)(g, z0, max_iter=len(ERRORS), tol=1e-300, stop_mode=stop_mode,
                                        check_every=check_every)
    z, abs_res, rel_res = brute_force_best(g, (z0,) + iterates, stop_mode)
    assert result.n_steps == len(ERRORS) and result.n_evals == len(ERRORS) + 1
    assert torch.equal(result.z, z)
    assert torch.equal(result.abs_residual, abs_res) and torch.equal(result.rel_residual, rel_res)
    # the trace: after each step, the largest per-sample best residual so far
    residual = (lambda r: r.rel_residual if stop_mode == "rel" else r.abs_residual)
    expected_trace = [float(residual(Scripted(iterates=iterates[:k])(
        g, z0, max_iter=k, tol=1e-300, stop_mode=stop_mode)).max()) for k in range(len(ERRORS) + 1)]
    assert result.trace.tolist() == pytest.approx(expected_trace, rel=1e-15)
    assert result.status is SolverStatus.NONFINITE  # sample 2 went NaN and did not converge


def test_without_return_best_the_last_iterate_and_its_residuals_come_back(sync_mode):
    c = torch.randn(5, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    g = half_map(c)
    iterates = scripted_iterates(c, [row for row in ERRORS if not any(map(math.isnan, row))])
    result = Scripted(iterates=iterates)(g, torch.zeros_like(c), max_iter=len(iterates), tol=1e-300,
                                        return_best=False)
    assert torch.equal(result.z, iterates[-1])
    gz = g(iterates[-1])
    torch.testing.assert_close(result.abs_residual, (gz - iterates[-1]).norm(dim=1), rtol=1e-15, atol=0)
    assert result.status is SolverStatus.MAX_ITER


@pytest.mark.parametrize("stop_mode", ["abs", "rel"])
@pytest.mark.parametrize("return_best", [True, False])
@pytest.mark.parametrize("check_every", [1, 3])
@pytest.mark.parametrize("name", ["broyden", "anderson", "fixed_point", "neumann"])
def test_returned_residuals_are_those_of_the_returned_z(name, check_every, return_best, stop_mode, sync_mode):
    """Also on a problem where iterates are non-monotone (a non-normal, nearly non-contractive A)."""
    problem = affine_problem((6, 12), 0.97, seed=11, dtype=torch.float32)
    problem.a = problem.a + 0.6 * torch.triu(torch.ones(12, 12), 1) / 12  # non-normal: residuals can rise
    result = solvers.get_solver(name)(problem, problem.zeros(), max_iter=25, tol=1e-30, stop_mode=stop_mode,
                                      check_every=check_every, return_best=return_best)
    gz = problem(result.z)
    true_abs = (gz - result.z).norm(dim=1)
    assert torch.equal(result.abs_residual, true_abs)  # the same float32 ops on the same numbers
    assert torch.equal(result.rel_residual, true_abs / gz.norm(dim=1))
    assert torch.equal(result.converged, result.residual <= 1e-30)


def test_statuses_and_early_stops():
    c = torch.ones(2, 3, dtype=torch.float64)
    g = half_map(c)
    z0 = 2 * c + 1.0
    run = lambda errors, **kw: Scripted(iterates=scripted_iterates(c, errors))(  # noqa: E731
        g, z0, max_iter=len(errors), tol=1e-6, stop_mode="abs", **kw)
    # both converge at step 2: the loop stops there (or at the next check)
    converging = [[0.5, 0.5], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]
    assert run(converging).n_steps == 2 and run(converging).status is SolverStatus.SUCCESS
    assert run(converging, check_every=3).n_steps == 3
    # one sample grows past 10× its initial residual, the other is stuck: DIVERGED, at max_iter
    diverging = [[0.9, 5.0], [0.9, 20.0], [0.9, 0.9]]
    result = run(diverging, divergence_factor=10.0)
    assert result.status is SolverStatus.DIVERGED and result.n_steps == 3
    assert torch.equal(result.converged, torch.tensor([False, False]))
    # every sample done (one converged, one diverged): stop at once
    assert run([[0.0, 5.0], [0.0, 20.0], [0.0, 0.9], [0.0, 0.9]], divergence_factor=10.0).n_steps == 2
    # non-finite takes precedence over divergence, and a non-finite sample counts as done
    result = run([[0.9, 20.0], [float("nan"), 0.9], [0.9, 0.9]], divergence_factor=10.0)
    assert result.status is SolverStatus.NONFINITE and result.n_steps == 2
    result = run([[float("inf"), 0.9], [0.9, 0.9]], divergence_factor=math.inf)
    assert result.status is SolverStatus.NONFINITE
    assert run([[0.9, 0.9], [0.8, 0.8]]).status is SolverStatus.MAX_ITER
    # a converged sample that later goes non-finite keeps its converged iterate and SUCCESS
    result = run([[0.0, 0.0], [float("nan"), 0.0]], check_every=2)
    assert result.status is SolverStatus.SUCCESS and bool(torch.isfinite(result.z).all())


def test_divergence_factor_infinite_with_a_zero_initial_residual_never_diverges():
    """inf · 0 is NaN: the divergence limit must not reject that sample's finite residuals."""
    c = torch.ones(2, 3, dtype=torch.float64)
    z0 = 2 * c
    z0[1] += 1.0  # sample 0 starts at its fixed point
    iterates = scripted_iterates(c, [[1.0, 0.5], [0.5, 0.25]])
    result = Scripted(iterates=iterates)(half_map(c), z0, max_iter=2, tol=1e-300, divergence_factor=math.inf)
    assert result.status is SolverStatus.MAX_ITER and result.n_steps == 2


def dense_broyden(g, z0, memory, steps):
    """Broyden's good method with a dense per-sample inverse Jacobian, restarted every ``memory``
    updates, skipping updates whose denominator vanishes: the iterates z_1 .. z_steps."""
    batch, dim = z0.shape
    eye = torch.eye(dim, dtype=z0.dtype).expand(batch, dim, dim)
    h = -eye.clone()
    z, f = z0, g(z0) - z0
    dz = f  # −H f with H = −I
    out = []
    for k in range(steps):
        z = z + dz
        f_new = g(z) - z
        if k % memory == 0:
            h = -eye.clone()
        h_df = torch.einsum("bij,bj->bi", h, f_new - f)
        denom = (dz * h_df).sum(dim=1)
        vt = torch.einsum("bi,bij->bj", dz, h)
        ok = (denom.abs() > torch.finfo(z0.dtype).tiny ** 0.5)[:, None, None]
        update = ((dz - h_df) / denom[:, None])[:, :, None] * vt[:, None, :]
        h = torch.where(ok, h + update, h)
        dz = -torch.einsum("bij,bj->bi", h, f_new)
        f = f_new
        out.append(z)
    return out


def dense_anderson(g, z0, memory, steps, lam):
    """Type-II Anderson on the last ``memory`` iterates, Tikhonov λ relative to the mean squared
    residual, solved densely: the iterates z_1 .. z_steps."""
    xs, gs, out = [z0], [g(z0)], []
    for _ in range(steps):
        x, gx = torch.stack(xs[-memory:], 1), torch.stack(gs[-memory:], 1)
        res = gx - x
        gram = res @ res.transpose(1, 2)
        n = gram.shape[-1]
        scale = gram.diagonal(dim1=1, dim2=2).mean(dim=1)
        y = torch.linalg.solve(gram + lam * scale[:, None, None] * torch.eye(n, dtype=z0.dtype), torch.ones(n, 1, dtype=z0.dtype))
        w = y[..., 0] / y.sum(dim=(1, 2))[:, None]
        z = torch.einsum("bn,bnd->bd", w, gx)
        xs.append(z)
        gs.append(g(z))
        out.append(z)
    return out


@pytest.mark.parametrize("symmetric", [True, False])
def test_broyden_iterates_equal_a_dense_reference(symmetric):
    """Memory 4 and 11 steps: two restarts, updates in every slot."""
    problem = affine_problem((3, 9), 0.9, seed=21, symmetric=symmetric)
    z0 = problem.zeros()
    reference = dense_broyden(problem, z0, memory=4, steps=11)
    for k, expected in enumerate(reference, start=1):
        result = solvers.get_solver("broyden")(problem, z0, max_iter=k, tol=1e-300, return_best=False, memory=4)
        assert result.n_steps == k
        torch.testing.assert_close(result.z, expected, rtol=1e-11, atol=1e-12)


def test_broyden_skips_an_update_whose_denominator_vanishes_in_one_sample_only():
    """Sample 1's map is a shift (Δf = 0 exactly, with integer c): no update, plain steps; sample 0
    is unaffected."""
    problem = affine_problem((2, 5), 0.8, seed=22)
    problem.a, problem.c = problem.a.clone(), problem.c.clone()
    problem.a[1] = torch.eye(5, dtype=torch.float64)  # g(z) = z + c: f never changes
    problem.c[1] = torch.tensor([1.0, -2.0, 3.0, 0.0, 5.0])
    z0 = problem.zeros()
    reference = dense_broyden(problem, z0, memory=30, steps=6)
    result = solvers.get_solver("broyden")(problem, z0, max_iter=6, tol=1e-300, return_best=False)
    torch.testing.assert_close(result.z, reference[-1], rtol=1e-11, atol=1e-12)
    assert torch.equal(result.z[1], 6 * problem.c[1])  # z0 + 6 plain steps of c, exactly
    # what is stored for the skipped sample: u = vᵀ = 0 (nothing of it can reach later products)
    g = _maps.BatchedMap(problem, torch.Size((2, 5)))
    broyden = solvers.get_solver("broyden")
    state = broyden.step(g, broyden.init(g, z0, g(z0)))
    assert not bool(state.us[0, 1].any()) and not bool(state.vts[0, 1].any())
    assert bool(state.us[0, 0].any()) and bool(state.vts[0, 0].any())
    alone = solvers.get_solver("broyden")(problem.__class__(problem.a[:1], problem.c[:1], (1, 5)),
                                          z0[:1], max_iter=6, tol=1e-300, return_best=False)
    torch.testing.assert_close(result.z[:1], alone.z, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("memory", [1, 3])
def test_anderson_iterates_equal_a_dense_reference(memory):
    """10 steps: the ring buffer of residuals and its Gram rows wrap around several times."""
    problem = affine_problem((3, 8), 0.9, seed=23, symmetric=True)
    z0 = problem.zeros()
    lam = 100 * torch.finfo(torch.float64).eps
    reference = dense_anderson(problem, z0, memory=memory, steps=10, lam=lam)
    for k, expected in enumerate(reference, start=1):
        result = solvers.get_solver("anderson")(problem, z0, max_iter=k, tol=1e-300, return_best=False, memory=memory)
        torch.testing.assert_close(result.z, expected, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", ["broyden", "anderson"])
def test_states_hand_over_exactly_g_of_z_minus_z(name):
    problem = affine_problem((2, 6), 0.7, seed=24)
    solver = solvers.get_solver(name)
    g = _maps.BatchedMap(problem, torch.Size((2, 6)))
    z0 = problem.zeros()
    state = solver.init(g, z0, g(z0))
    for _ in range(8):  # past Anderson's ring wrap
        assert torch.equal(state.fz, state.gz - state.z)
        state = solver.step(g, state)
    solver.finish(state)


@pytest.mark.parametrize("name", ["broyden", "anderson"])
def test_reused_memory_holds_nothing_of_the_previous_solve(name):
    """Buffers come back uninitialised from the previous solve: poisoning them changes nothing."""
    problem = affine_problem((3, 7), 0.9, seed=25)
    solve = lambda: solvers.get_solver(name)(problem, problem.zeros(), max_iter=12, tol=1e-300)  # noqa: E731
    _workspace.clear()
    first = solve()
    assert _workspace._kept, "the solve should have handed its memory back"
    for buffer in _workspace._kept.values():
        buffer.fill_(float("nan"))
    second = solve()
    assert torch.equal(first.z, second.z) and torch.equal(first.abs_residual, second.abs_residual)


def test_workspace_keeps_cpu_buffers_up_to_its_limit(monkeypatch):
    _workspace.clear()
    like = torch.zeros(1)
    buffer = _workspace.take(like, 4, 5)
    _workspace.give_back(buffer)
    assert _workspace.take(like, 4, 5) is buffer  # reused
    assert _workspace.take(like, 4, 5) is not buffer  # taken, so not handed out twice
    monkeypatch.setattr(_workspace, "MAX_KEPT_BYTES", 100)
    _workspace.give_back(torch.zeros(100))  # 400 bytes: not kept
    assert not _workspace._kept
    _workspace.clear()


def test_a_fixed_budget_reads_as_such_in_the_status_and_the_epoch_line():
    """phantom's and spide's spent budget is BUDGET (asked for, not a failure), and the epoch line
    says "fixed budget" with the residual reached; a real failure still shows as one."""
    from implicit_snn.app.report import format_row

    problem = affine_problem((3, 6), 0.9, seed=4)
    for name, options in (("phantom", {"steps": 4}), ("spide", {})):
        result = solvers.get_solver(name)(problem, problem.c, max_iter=4, tol=1e-12, **options)
        assert result.status is SolverStatus.BUDGET and not bool(result.converged.any())
        assert "fixed budget" in result.status.value
    base = dict(epoch=1, lr=0.05, train_loss=0.5, train_acc=0.8, backward_evals_mean=5.0, train_seconds=1.0,
                train_images_per_s=100.0, backward_rel_residual_mean=3.2e-2, backward_converged_fraction=0.0)
    line = format_row({**base, "backward_status": {"BUDGET": 10}})
    assert "backward 5.0 VJPs, fixed budget, rel. residual 3.2e-02" in line and "converged" not in line
    failing = format_row({**base, "backward_status": {"DIVERGED": 10}})
    assert "0% converged" in failing
    overflow = solvers.get_solver("phantom")(lambda z: z * 1e30, problem.c, max_iter=12, tol=1e-12, steps=12)
    assert overflow.status is SolverStatus.NONFINITE  # a budget that overflowed is a failure, not BUDGET
