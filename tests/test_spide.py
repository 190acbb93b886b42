"""The spide (SPIDE) solver: hand-computed dynamics, spike-only inputs, O(θ/T) accuracy, honest results."""

import math

import pytest
import torch

import models
import solvers
from implicit_snn import ImplicitAdjoint
from solvers import SPIDE, SolverStatus
from tests.helpers import affine_problem, true_residuals

SOLVE = solvers.get_solver("spide")


class Spy:
    """An affine map g(z) = z Aᵀ + c on [B, D] that records every input it is given."""

    def __init__(self, a, c):
        self.a, self.c, self.inputs = a, c, []

    def __call__(self, z):
        self.inputs.append(z.clone())
        return torch.einsum("bij,bj->bi", self.a, z) + self.c


def spy_for(problem):
    return Spy(problem.a, problem.c)


def errors(result, problem):
    """Per-sample ‖z − z*‖."""
    return (result.z - problem.solution).reshape(result.z.shape[0], -1).norm(dim=1)


# The 2-unit example worked by hand: A = [[1/4, 1/4], [0, −1/2]], c = (1/2, −3/8), θ = 1, neurons
# fire at |u| ≥ θ/2 (SPIDE's reset) and subtract θ·s. Per step t: the input g(θ s_{t−1}), the
# potential after integrating it, the spikes, the potential after the reset:
#   t=1  g(0, 0)  = ( 1/2,  −3/8)  u = ( 1/2, −3/8)  s = (1,  0)  u = (−1/2, −3/8)
#   t=2  g(1, 0)  = ( 3/4,  −3/8)  u = ( 1/4, −3/4)  s = (0, −1)  u = ( 1/4,  1/4)
#   t=3  g(0, −1) = ( 1/4,   1/8)  u = ( 1/2,  3/8)  s = (1,  0)  u = (−1/2,  3/8)
#   t=4  g(1, 0)  = ( 3/4,  −3/8)  u = ( 1/4,  0  )  s = (0,  0)  u = ( 1/4,  0  )
# Estimate θ Σs / 4 = (1/2, −1/4); g there = (9/16, −1/4); residual (1/16, 0) = (u_T + Aθs_T)/T.
# Running estimates after 1, 2, 3 steps: (1, 0), (1/2, −1/2), (2/3, −1/3).
HAND_A = [[0.25, 0.25], [0.0, -0.5]]
HAND_C = [0.5, -0.375]
HAND_INPUTS = [[0.0, 0.0], [1.0, 0.0], [0.0, -1.0], [1.0, 0.0]]
HAND_Z = [0.5, -0.25]
HAND_RUNNING = [[0.0, 0.0], [1.0, 0.0], [0.5, -0.5], [2 / 3, -1 / 3], [0.5, -0.25]]


@pytest.mark.parametrize("scale", [1.0, 4.0, 0.125])
def test_hand_computed_example_matches_exactly(scale):
    """Scaling c and θ together scales every spike input and the estimate (powers of two: exact)."""
    a = torch.tensor([HAND_A], dtype=torch.float64)
    spy = Spy(a, scale * torch.tensor([HAND_C], dtype=torch.float64))
    result = SOLVE(spy, torch.zeros(1, 2, dtype=torch.float64), max_iter=4, tol=1e-9, stop_mode="abs",
                   threshold=scale)
    expected_inputs = [scale * torch.tensor([row], dtype=torch.float64) for row in HAND_INPUTS]
    for got, expected in zip(spy.inputs, expected_inputs + [scale * torch.tensor([HAND_Z], dtype=torch.float64)]):
        assert torch.equal(got, expected)
    assert len(spy.inputs) == result.n_evals == 5 and result.n_steps == 4
    assert torch.equal(result.z, scale * torch.tensor([HAND_Z], dtype=torch.float64))
    assert torch.equal(result.abs_residual, torch.tensor([scale / 16], dtype=torch.float64))
    assert result.status is SolverStatus.BUDGET and not bool(result.converged.any())
    # The trace (by linearity between its ends) is the true residual of each running estimate.
    running = scale * torch.tensor(HAND_RUNNING, dtype=torch.float64)
    true = torch.stack([(spy(z[None]) - z).norm() for z in running])
    torch.testing.assert_close(result.trace, true, rtol=1e-14, atol=0)


def test_every_input_but_the_measurement_is_theta_times_ternary_spikes():
    """A strong check that the solve is spike-driven: g never sees anything but θ·s, s ∈ {−1, 0, 1}."""
    problem = affine_problem((6, 15), 0.7, seed=11)
    spy = spy_for(problem)
    z0 = problem.c.clone()  # the adjoint's start, ∂L/∂a
    result = SOLVE(spy, z0, max_iter=60, tol=1e-12, headroom=2.0)
    theta = 2.0 * torch.maximum(z0.abs().amax(dim=1), problem.c.abs().amax(dim=1))[:, None]
    assert len(spy.inputs) == result.n_evals == 61
    assert torch.equal(spy.inputs[0], torch.zeros_like(z0))  # no spikes before the first step
    spikes = torch.stack([x / theta for x in spy.inputs[:-1]])
    assert bool(((spikes == -1) | (spikes == 0) | (spikes == 1)).all())
    assert bool((spikes == 1).any()) and bool((spikes == -1).any())  # both signs are used
    assert torch.equal(spy.inputs[-1], result.z)  # the last evaluation measures the estimate
    # The readout is θ Σₜ sₜ / T: the spikes fed back (s_1 … s_{T−1}) plus the last step's, s_T.
    last = result.z * 60 / theta - spikes[1:].sum(dim=0)
    torch.testing.assert_close(last, last.round(), rtol=0, atol=1e-12)
    assert bool((last.round().abs() <= 1).all())


@pytest.mark.parametrize("norm, seed", [(0.3, 0), (0.6, 1), (0.9, 2)])
def test_error_decreases_like_one_over_time_steps_and_obeys_the_bound(norm, seed):
    """Unsaturated, ‖z − z*‖ ≤ ‖(I − A)⁻¹‖ ‖u_T + Aθs_T‖ / T ≤ θ√D (λ + ‖A‖) / ((1 − ‖A‖) T)."""
    problem = affine_problem((16, 20), norm, seed=seed)
    theta = 2.0 * problem.c.abs().amax(dim=1)
    steps = [25, 50, 100, 200, 400]
    errs = []
    for t in steps:
        result = SOLVE(problem, problem.c, max_iter=t, tol=1e-12)
        errs.append(errors(result, problem))
        bound = theta * math.sqrt(20) * (0.5 + norm) / ((1 - norm) * t)
        assert bool((errs[-1] <= bound).all()), (t, errs[-1] / bound)
    errs = torch.stack(errs)  # [len(steps), B]
    ratio = errs[3:] / errs[:-3]  # error at 8T over error at T, per sample
    assert float(ratio.mean()) <= 0.2, ratio.mean()  # measured 0.12-0.14: 1/8 is O(1/T)
    assert float(ratio.max()) <= 0.3, ratio.max()  # measured ≤ 0.21
    logs_t = torch.log(torch.tensor(steps, dtype=torch.float64))
    logs_e = torch.log(errs.mean(dim=1))
    centred = logs_t - logs_t.mean()
    slope = float((centred * (logs_e - logs_e.mean())).sum() / centred.square().sum())
    assert -1.2 <= slope <= -0.85, slope  # not geometric, not slower than 1/T


def test_spide_reset_halves_the_error_of_the_plain_integrate_and_fire_neuron():
    """Firing at θ/2 and subtracting θ keeps |u| ≤ θ/2 (rounding), the plain neuron's |u| < θ."""
    problem = affine_problem((32, 20), 0.6, seed=3)
    spide, plain = (
        torch.stack([errors(SOLVE(problem, problem.c, max_iter=t, tol=1e-12, firing_level=level),
                            problem) for t in (50, 100, 200, 400)])
        for level in (0.5, 1.0)
    )
    assert 0.35 <= float(spide.mean() / plain.mean()) <= 0.65  # measured 0.47-0.51


def test_reported_residuals_and_evaluations_are_measured_even_for_a_nonaffine_map():
    """Residuals come from one more evaluation at the returned z, never from the running averages."""
    problem = affine_problem((3, 5, 4), 0.6, seed=4)
    calls = []

    def g(z):  # mildly non-affine: linearity would give the wrong residual
        calls.append(1)
        return problem(z) + 0.2 * torch.tanh(z)

    for stop_mode in ("abs", "rel"):
        calls.clear()
        result = SOLVE(g, problem.zeros(), max_iter=37, tol=1e-9, stop_mode=stop_mode)
        assert result.n_evals == len(calls) == 38 and result.n_steps == 37
        true_abs, true_rel = true_residuals(g, result.z)
        torch.testing.assert_close(result.abs_residual, true_abs, rtol=1e-12, atol=0)
        torch.testing.assert_close(result.rel_residual, true_rel, rtol=1e-12, atol=0)
        assert float(result.trace[-1]) == float(result.residual.max())
        assert result.trace.shape == (38,)
        assert result.z.shape == (3, 5, 4)


def test_max_iter_is_the_one_budget_and_zero_steps_measure_the_initial_guess():
    problem = affine_problem((2, 6), 0.5, seed=5)
    budget = SOLVE(problem, problem.c, max_iter=10, tol=1e-9)
    assert budget.n_steps == 10 and budget.n_evals == 11
    assert budget.status is SolverStatus.BUDGET
    assert "time_steps" not in SOLVE.option_names  # no second budget: T is max_iter (b_max_iter in a backward)
    with pytest.raises(ValueError, match=r"^spide got unknown option\(s\) \['time_steps'\]"):
        SOLVE(problem, problem.c, max_iter=10, tol=1e-9, time_steps=10)
    with pytest.raises(ValueError, match=r"^spide got unknown option\(s\) \['time_steps'\]"):
        ImplicitAdjoint("spide", b_max_iter=30, b_options={"time_steps": 30})
    with pytest.raises(ValueError, match=r"^phantom: its option `steps=10` exceeds `b_max_iter`=5"):
        ImplicitAdjoint("phantom", b_max_iter=5, b_options={"steps": 10})
    adjoint = ImplicitAdjoint("spide", b_max_iter=7)
    v = adjoint.solver(problem, problem.c, max_iter=adjoint.max_iter, tol=1e-9, **adjoint.call_options)
    assert v.n_steps == 7 and v.n_evals == 8
    none = SOLVE(problem, problem.c, max_iter=0, tol=1e-9)
    assert none.n_steps == 0 and none.n_evals == 1 and torch.equal(none.z, problem.c)
    gz = problem(problem.c)
    torch.testing.assert_close(none.abs_residual, (gz - problem.c).norm(dim=1), rtol=1e-14, atol=0)


def test_loose_tolerance_met_is_success_and_flags_are_per_sample():
    problem = affine_problem((4, 10), 0.5, seed=6)
    result = SOLVE(problem, problem.c, max_iter=400, tol=0.02)
    assert result.status is SolverStatus.SUCCESS and bool(result.converged.all())
    assert bool((result.rel_residual <= 0.02).all())
    mixed = SOLVE(problem, problem.c, max_iter=400, tol=float(result.rel_residual.median()))
    assert torch.equal(mixed.converged, mixed.rel_residual <= mixed.tol)
    assert mixed.status is SolverStatus.BUDGET


def test_a_fixed_threshold_too_small_saturates_and_is_reported_not_returned_as_success():
    """A neuron fires at most once a step, so |zᵢ| > θ is out of reach for a fixed θ; the residual says so."""
    problem = affine_problem((4, 20), 0.9, seed=7, symmetric=True)  # ‖z*‖_∞ is 2.6-6.1 ‖c‖_∞
    solution = problem.solution
    peak = float(solution.abs().max())
    for theta in (0.25 * peak, 0.5 * peak):
        low = SOLVE(problem, problem.c, max_iter=500, tol=0.05, threshold=theta)
        assert low.status is SolverStatus.BUDGET
        assert bool((low.z.abs().amax(dim=1) <= theta).all())  # the rate is clipped at one spike a step
        out_of_reach = solution.abs().amax(dim=1) > 1.5 * theta
        assert bool(out_of_reach.any())
        # Those samples report a large residual (not a silent wrong answer); their error is larger still.
        assert bool((low.rel_residual[out_of_reach] > 1.5 * low.tol).all()), low.rel_residual
        assert not bool(low.converged[out_of_reach].any())
        assert bool((errors(low, problem) / solution.norm(dim=1) > 0.3)[out_of_reach].all())
    enough = SOLVE(problem, problem.c, max_iter=500, tol=0.05, threshold=2 * peak)
    assert enough.status is SolverStatus.SUCCESS
    assert float((errors(enough, problem) / solution.norm(dim=1)).max()) < 0.05  # measured 0.022


def test_auto_threshold_grows_where_the_solution_outgrows_the_right_hand_side():
    """"auto" starts at headroom · ‖c‖_∞, which is below ‖z*‖_∞ here (the fixed θ above saturates);
    each sample's θ doubles while its neurons receive more than a spike a step can carry."""
    problem = affine_problem((4, 20), 0.9, seed=7, symmetric=True)
    spy = spy_for(problem)
    result = SOLVE(spy, problem.c, max_iter=500, tol=0.05)
    assert result.status is SolverStatus.SUCCESS
    assert float((errors(result, problem) / problem.solution.norm(dim=1)).max()) < 0.05  # measured 0.013
    start = 2.0 * problem.c.abs().amax(dim=1)
    final = torch.stack(spy.inputs[1:-1]).abs().amax(dim=(0, 2))  # the largest spike each sample sent: its θ
    ratio = final / start
    torch.testing.assert_close(ratio, 2.0 ** ratio.log2().round(), rtol=1e-12, atol=0)  # θ only doubles
    assert bool((ratio >= 2).any()) and bool((final >= problem.solution.abs().amax(dim=1)).all())
    warm = SOLVE(problem, problem.solution, max_iter=500, tol=0.05)  # a warm start sets θ right from the start
    assert warm.status is SolverStatus.SUCCESS


def test_coupled_batch_gets_a_threshold_per_sample_and_solves_the_coupled_problem():
    """g mixes the samples (here through the batch mean): one problem, solved by spikes. A sample whose
    right-hand side is 10⁻⁴ of the others' gets its solution (of the others' size, through the mean)
    from the coupling: its θ starts at its own tiny scale and grows to fit that solution."""
    problem = affine_problem((3, 8), 0.4, seed=8)
    problem.c[1] *= 1e-4
    inputs = []

    def coupled_map(z):
        inputs.append(z.clone())
        return problem(z) + 0.3 * z.mean(dim=0, keepdim=True)

    z0 = problem.c.clone()
    exact = solvers.get_solver("exact")(coupled_map, z0, max_iter=3, tol=1e-13, coupled=True)
    inputs.clear()
    result = SOLVE(coupled_map, z0, max_iter=400, tol=0.02, coupled=True)
    spikes = torch.stack(inputs[1:-1])  # after g(0) = c, before the measurement
    level = spikes.abs().amax(dim=2, keepdim=True)  # θ per step and sample (θ may grow during the run)
    assert bool(((spikes.abs() == level) | (spikes == 0)).all())  # every input is θ·s, s ternary
    theta = level[-1, :, 0]
    peak = exact.z.abs().amax(dim=1)
    assert bool((theta >= peak).all()) and bool((theta <= 8 * peak).all()), theta / peak
    assert result.status is SolverStatus.SUCCESS, result.rel_residual
    per_sample = (result.z - exact.z).norm(dim=1) / exact.z.norm(dim=1)
    assert float(per_sample.max()) < 0.02, per_sample
    assert result.n_evals == 401
    with pytest.raises(TypeError, match="`coupled` must be True or False"):
        SOLVE(coupled_map, z0, max_iter=10, tol=1e-6, coupled="yes")


def test_rounds_converge_geometrically_where_one_round_is_one_over_t():
    """Each round solves for the residual the rounds before left, read from the neurons' potentials:
    with R rounds the error falls like (C/T)^R, not C/T."""
    problem = affine_problem((16, 20), 0.6, seed=1)
    err = {(rounds, t): float((errors(SOLVE(problem, problem.c, max_iter=t, tol=1e-12, rounds=rounds), problem)
                               / problem.solution.norm(dim=1)).max())
           for rounds in (1, 3) for t in (150, 600)}
    assert err[1, 600] / err[1, 150] > 0.12  # 1/T: about 1/4
    assert err[3, 600] / err[3, 150] < 0.05  # (1/T)^3: about 1/64
    assert err[3, 600] < 0.01 * err[1, 600], err


def test_rounds_feed_only_spikes_and_trace_the_true_residual_of_every_running_estimate():
    """Every input but g(0) and the measurement is θ·s with one θ per sample and round; the trace is
    the true residual of the running estimate after each step, round boundaries included."""
    problem = affine_problem((2, 6), 0.5, seed=12)
    spy = spy_for(problem)
    length, rounds = 20, 3
    result = SOLVE(spy, problem.c, max_iter=length * rounds, tol=1e-12, stop_mode="abs", rounds=rounds)
    assert result.n_evals == len(spy.inputs) == length * rounds + 1  # g(0), T − 1 spike inputs, the measurement
    fed = spy.inputs[1:-1]
    running, z = [torch.zeros_like(problem.c)], torch.zeros_like(problem.c)
    for k in range(rounds):
        chunk = fed[k * length:(k + 1) * length]  # the last round has one input fewer: x_T is never fed
        theta = torch.stack(chunk).abs().amax(dim=(0, 2))
        ternary = torch.stack(chunk) / theta[None, :, None]
        assert bool(((ternary == -1) | (ternary == 0) | (ternary == 1)).all())
        total = torch.zeros_like(z)
        for t, x in enumerate(chunk[:length - 1], start=1):
            total = total + x
            running.append(z + total / t)
        if k + 1 < rounds:
            z = z + (total + chunk[-1]) / length
            running.append(z)
    true = torch.stack([(problem(r) - r).norm(dim=1).max() for r in running + [result.z]])
    torch.testing.assert_close(result.trace, true, rtol=1e-9, atol=1e-15)


def test_zero_right_hand_side_gives_zero_without_spikes():
    z0 = torch.zeros(2, 3, dtype=torch.float64)
    result = SOLVE(lambda z: 0.5 * z, z0, max_iter=20, tol=1e-9, stop_mode="abs")
    assert torch.equal(result.z, z0) and result.status is SolverStatus.SUCCESS


@pytest.mark.parametrize("option, value", [
    ("threshold", 0.0), ("threshold", -1.0), ("threshold", math.nan), ("threshold", math.inf),
    ("threshold", "automatic"), ("threshold", True),
    ("headroom", 0.0), ("headroom", math.inf), ("headroom", "2"),
    ("firing_level", 0.4), ("firing_level", 1.5),
    ("rounds", 0), ("rounds", 1.5), ("rounds", True),
])
def test_bad_option_values_fail_with_the_option_named(option, value):
    with pytest.raises(ValueError, match=f"spide: `{option}` must be"):
        SOLVE.with_options(**{option: value})
    with pytest.raises(ValueError, match=f"`{option}`"):
        SPIDE(**{option: value})


def test_bad_calls_are_rejected():
    problem = affine_problem((2, 4), 0.5)
    with pytest.raises(ValueError, match="unknown option.*time_step'.*it accepts its options"):
        SOLVE(problem, problem.zeros(), max_iter=10, tol=1e-6, time_step=5)
    with pytest.raises(ValueError, match="batched with shape"):
        SOLVE(problem, torch.zeros(4, dtype=torch.float64), max_iter=10, tol=1e-6)
    with pytest.raises(ValueError, match="`tol` must be"):
        SOLVE(problem, problem.zeros(), max_iter=10, tol=0.0)
    with pytest.raises(ValueError, match="shaped like its input"):
        SOLVE(lambda z: z[:, :2], problem.zeros(), max_iter=10, tol=1e-6)
    z0 = problem.zeros()
    z0[0, 1] = math.nan
    with pytest.raises(ValueError, match="`z0` contains NaN or Inf"):
        SOLVE(problem, z0, max_iter=10, tol=1e-6)
    with pytest.raises(ValueError, match="NaN or Inf at the first spike input"):
        SOLVE(lambda z: z + math.inf, problem.zeros(), max_iter=10, tol=1e-6)
    with pytest.raises(solvers.ConvergenceError, match="did not converge"):
        SOLVE(problem, problem.c, max_iter=10, tol=1e-9, throw=True)


def test_map_turning_nonfinite_midway_is_nonfinite():
    calls = []

    def g(z):
        calls.append(1)
        return z + (math.inf if len(calls) > 3 else 1.0)

    result = SOLVE(g, torch.zeros(2, 3, dtype=torch.float64), max_iter=10, tol=1e-6)
    assert result.status is SolverStatus.NONFINITE and not bool(result.converged.any())


def test_registered_with_a_description():
    assert "spide" in solvers.available_solvers()
    assert "SPIDE" in solvers.describe_solvers()["spide"]
    assert isinstance(SOLVE, SPIDE) and SOLVE.option_names == ["threshold", "headroom", "firing_level", "rounds"]


def test_runs_on_every_device(device):
    problem = affine_problem((3, 12), 0.5, seed=9, device=device, dtype=torch.float32)
    result = SOLVE(problem, problem.c, max_iter=200, tol=1e-9)
    assert result.z.device.type == device.type and result.z.dtype == torch.float32
    assert result.n_evals == 201
    rel = (result.z - problem.solution).norm(dim=1) / problem.solution.norm(dim=1)
    assert float(rel.max()) < 0.03


def feedback_snn(train):
    torch.manual_seed(0)
    model = models.from_spec("8-6 (F8)", (5,), 3, dropout=0.0, producer="if", producer_options=dict(time_steps=40))
    x, y = torch.randn(6, 5), torch.tensor([0, 1, 2, 0, 1, 2])
    with torch.no_grad():
        model.train()(x)  # batch-norm running statistics for eval mode
    return model.train(train), x, y


def cosine(a, b):
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def test_implicit_adjoint_by_spikes_gives_the_exact_parameter_gradient_direction(float64):
    """ImplicitAdjoint("spide") through a FeedbackSNN (eval mode: a repeatable forward) against "exact"."""
    model, x, y = feedback_snn(train=False)

    def gradient():
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    model.set_backward("exact", b_max_iter=2, b_tol=1e-12)
    reference = gradient()
    cosines = {}
    for steps in (20, 250, 1000):
        model.set_backward("spide", b_max_iter=steps, b_tol=1e-9)
        cosines[steps] = cosine(gradient(), reference)
        assert model.last_backward.n_evals == steps  # c is the offset: T − 1 spike products and the measurement
        assert model.last_backward.status is SolverStatus.BUDGET  # tol 1e-9 is out of reach, and said so
    assert cosines[250] > 0.9999, cosines  # measured 0.999994
    assert 1 - cosines[1000] < 1 - cosines[250] < 1 - cosines[20], cosines


class Switch:
    """A solver callable that runs the registry solver named by ``use`` (both see the same map)."""

    def __init__(self):
        self.use, self.options = "exact", {}

    def __call__(self, g, z0, **settings):
        return solvers.get_solver(self.use)(g, z0, **{**settings, **self.options})


def test_spide_backward_in_training_mode_through_one_forward(float64):
    """Training mode: batch statistics (possibly coupling the samples) and a forward that changes the
    model, so both backwards differentiate the same forward graph."""
    model, x, y = feedback_snn(train=True)
    switch = Switch()
    model.set_backward(switch, b_max_iter=250, b_tol=1e-12)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    params = [p for p in model.parameters() if p.requires_grad]

    def gradient():
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        return torch.cat([g.flatten() for g in grads if g is not None])

    reference = gradient()
    assert model.last_backward.success
    switch.use = "spide"  # within the backward's b_max_iter of 250: 250 steps
    got = gradient()
    assert model.last_backward.n_evals == 250  # 249 spike products (c is given) and the measurement
    assert cosine(got, reference) > 0.999, cosine(got, reference)
