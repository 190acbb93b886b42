"""The driver's call options through the library's entry points: every registered solver honours
``throw``, ``check_every``, ``return_best`` and ``divergence_factor`` (the effect is observed) or
refuses it with a one-line ValueError naming the option and the solver; unknown options list
exactly what is accepted; bad options fail when the backward or producer is built."""

import math

import pytest
import torch

import solvers
from implicit_snn import ImplicitAdjoint, implicit_grad, producers
from solvers import ConvergenceError, SolverStatus
from tests.helpers import relative_error

B, D = 3, 8
DRIVER = ["broyden", "anderson", "fixed_point", "neumann", "exact", "gmres"]
TORCHDEQ = ["torchdeq_broyden", "torchdeq_anderson", "torchdeq_fixed_point_iter"]
ALL = DRIVER + ["phantom", "spide"] + TORCHDEQ
ENTRIES = ["implicit_grad", "analytic"]
#: (entry, solver) pairs: the analytic forward takes only the solvers for nonlinear maps.
PAIRS = [(entry, name) for entry in ENTRIES for name in ALL if entry == "implicit_grad" or solvers.solves_nonlinear(name)]
#: Which call options each solver refuses, as (option, value) -> words its message must contain.
REFUSED = {
    "phantom": {("check_every", 2): "cannot be honoured", ("return_best", True): "must be False"},
    "spide": {("check_every", 2): "cannot be honoured", ("return_best", True): "must be False"},
    **{name: {("check_every", 2): "cannot be honoured"} for name in TORCHDEQ},
}


class Problem:
    """f(a, x) = W a + x with ‖W‖ = 0.5 on [B, D] rows; both the forward map and the adjoint map
    J_fᵀ v + u are evaluated through here, so that after ``poison_after`` evaluations they can
    return noise (a solve whose later iterates are worse than its earlier ones)."""

    def __init__(self, poison_after=None, seed=0, noise=1e3):
        gen = torch.Generator().manual_seed(seed)
        w = torch.randn(D, D, generator=gen, dtype=torch.float64)
        self.w = 0.5 * w / torch.linalg.matrix_norm(w, ord=2)
        self.x = torch.randn(B, D, generator=gen, dtype=torch.float64)
        self.u = torch.randn(B, D, generator=gen, dtype=torch.float64)
        self.noise = torch.Generator().manual_seed(seed + 1)
        self.poison_after, self.scale = poison_after, noise
        self.calls = 0
        eye = torch.eye(D, dtype=torch.float64)
        self.forward_solution = torch.linalg.solve(eye - self.w, self.x.T).T  # a = W a + x
        self.adjoint_solution = torch.linalg.solve(eye - self.w.T, self.u.T).T  # v = Wᵀ v + u

    def _maybe_poison(self, out):
        self.calls += 1
        if self.poison_after is not None and self.calls > self.poison_after:
            return out + self.scale * torch.randn(out.shape, generator=self.noise, dtype=out.dtype)
        return out

    # The network protocol of the analytic producer.
    def fixed_point_map(self, a, x):
        return self._maybe_poison(a @ self.w.T + x)

    def map_inputs(self, x):
        return (x,)

    def initial_state(self, x):
        return torch.zeros_like(x)

    # f and its explicit transposed Jacobian for implicit_grad.
    def f(self, a, x):
        return a @ self.w.T + x

    def linearize(self, a, x):
        def jt(v, add=None):
            out = self._maybe_poison(v @ self.w)
            return out if add is None else out + add
        return self.f(a, x), jt


def solve(entry, name, *, max_iter, tol, options, poison_after=None, noise=1e3):
    """(the solve's SolverResult, the exact solution) through ``entry``."""
    problem = Problem(poison_after, noise=noise)
    if entry == "implicit_grad":
        results = []
        x = problem.x.clone().requires_grad_()
        out = implicit_grad(problem.f, torch.zeros(B, D, dtype=torch.float64), x, b_solver=name,
                            b_max_iter=max_iter, b_tol=tol, b_options=options, on_backward=results.append,
                            linearize=problem.linearize)
        (out * problem.u).sum().backward()
        return results[0], problem.adjoint_solution
    producer = producers.get_producer("analytic", f_solver=name, f_max_iter=max_iter, f_tol=tol, f_options=options)
    return producer(problem, problem.x).extras["solver_result"], problem.forward_solution


def refused(name, option, value):
    return REFUSED.get(name, {}).get((option, value))


def expect_refusal(entry, name, option, value):
    words = refused(name, option, value)
    with pytest.raises(ValueError, match=f"^{name}: `{option}` .*{words}") as info:
        solve(entry, name, max_iter=8, tol=1e-6, options={option: value})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("entry, name", PAIRS)
def test_throw(entry, name):
    """A budget too small to converge: throw=True raises ConvergenceError, throw=False reports."""
    settings = dict(max_iter=8, tol=1e-300, poison_after=3)
    with pytest.raises(ConvergenceError) as info:
        solve(entry, name, options={"throw": True}, **settings)
    assert not info.value.result.success
    result, _ = solve(entry, name, options={"throw": False}, **settings)
    assert not result.success


@pytest.mark.parametrize("entry, name", PAIRS)
def test_check_every(entry, name):
    """The driver's solvers stop at the first check after convergence: n_steps rounds the
    every-step count up to a multiple of k; the others refuse the option."""
    if refused(name, "check_every", 2):
        expect_refusal(entry, name, "check_every", 2)
        return
    settings = dict(max_iter=100, tol=1e-10)
    base, _ = solve(entry, name, options={"check_every": 1}, **settings)
    assert base.success
    for k in (2, base.n_steps + 1, 3):
        result, _ = solve(entry, name, options={"check_every": k}, **settings)
        assert result.success
        assert result.n_steps == min(math.ceil(base.n_steps / k) * k, settings["max_iter"])
        assert result.n_evals - base.n_evals == result.n_steps - base.n_steps  # one evaluation per extra step


@pytest.mark.parametrize("entry, name", PAIRS)
def test_return_best(entry, name):
    """The map turns to noise after 60 clean evaluations: the best iterate is the converged one, the
    last is noise; return_best picks which comes back (or is refused where it cannot be honoured)."""
    if refused(name, "return_best", True):
        expect_refusal(entry, name, "return_best", True)
        result, exact = solve(entry, name, max_iter=8, tol=1e-6, options={"return_best": False})
        assert result.n_evals > 1  # False, what they do, is accepted
        return
    settings = dict(max_iter=63, tol=1e-300, poison_after=60)
    own = {}
    if name == "gmres":
        # Its residuals never rise within a cycle, and it solves this problem exactly in a few steps:
        # short cycles, noise from the second one on, the last step a measuring restart.
        own, settings = {"restart": 2}, dict(max_iter=9, tol=1e-300, poison_after=4)
    if name == "torchdeq_broyden":
        # Once its Broyden update degenerates (at convergence, or under large noise) torchdeq's
        # Broyden returns NaN for every sample (its masked mixing multiplies NaN by 0): stop short.
        settings = dict(max_iter=10, tol=1e-300, poison_after=8, noise=10.0)
    best, exact = solve(entry, name, options={"return_best": True, **own}, **settings)
    last, _ = solve(entry, name, options={"return_best": False, **own}, **settings)
    if name in TORCHDEQ:
        # The adapter measures the returned point with one more (noisy) evaluation: compare the points.
        assert relative_error(best.z, exact) < 1e-3
        assert not relative_error(last.z, exact) < 10 * relative_error(best.z, exact)  # NaN counts as far, too
    else:
        # Anderson gives noisy residuals no weight, so its last point stays good: compare the
        # residuals measured at the returned points (the best one's before the noise).
        assert float(best.abs_residual.amax()) < 1e-3 * float(last.abs_residual.amax())
        assert not float(last.abs_residual.amax()) < 1.0


@pytest.mark.parametrize("entry, name", PAIRS)
def test_divergence_factor(entry, name):
    """Noise of 1e3 after 3 evaluations: beyond 10× the initial residual, so DIVERGED with
    divergence_factor=10, within the default 1e6, so MAX_ITER."""
    settings = dict(max_iter=8, tol=1e-300, poison_after=3)
    own = {"restart": 2} if name == "gmres" else {}  # so that its residual is measured (at restarts) after the noise
    default, _ = solve(entry, name, options=own, **settings)
    # A fixed-budget method that spent its budget says so; the others ran out of steps.
    assert default.status is (SolverStatus.BUDGET if name in ("phantom", "spide") else SolverStatus.MAX_ITER)
    small, _ = solve(entry, name, options={"divergence_factor": 10.0, **own}, **settings)
    assert small.status is SolverStatus.DIVERGED


@pytest.mark.parametrize("name", ALL)
def test_unknown_options_list_exactly_what_the_solver_accepts(name):
    solver = solvers.get_solver(name)
    accepted_calls = [o for o in solvers.CALL_OPTIONS if not refused(name, o, 2)]  # return_best=False is accepted
    expected = (f"{name} got unknown option(s) ['bogus']; it accepts its options {solver.option_names} "
                f"and the call options {accepted_calls}")
    with pytest.raises(ValueError) as info:
        ImplicitAdjoint(name, b_options={"bogus": 1})
    assert str(info.value) == expected
    if solvers.solves_nonlinear(name):
        with pytest.raises(ValueError) as info:
            producers.get_producer("analytic", f_solver=name, f_options={"bogus": 1})
        assert str(info.value) == expected
    for option in ("max_iter", "tol", "coupled"):  # settings have their own names, coupling is the network's
        with pytest.raises(ValueError, match="unknown option"):
            ImplicitAdjoint(name, b_options={option: 1})


@pytest.mark.parametrize("options, words", [
    ({"time_steps": 100}, r" got unknown option\(s\) \['time_steps'\]; it accepts its options \['threshold'"),
    ({"threshold": -1.0}, ": `threshold` must be"),
    ({"check_every": 3}, ": `check_every` cannot be honoured"),
    ({"return_best": True}, ": `return_best` must be False"),
    ({"divergence_factor": 0.0}, ": `divergence_factor` must be a number > 0"),
    ({"throw": "yes"}, ": `throw` must be True or False"),
])
def test_spide_options_fail_when_the_backward_is_built(options, words):
    with pytest.raises(ValueError, match=f"^spide{words}"):
        ImplicitAdjoint("spide", b_options=options)
    with pytest.raises(ValueError, match="^`f_solver` 'spide' solves affine maps only"):
        producers.get_producer("analytic", f_solver="spide", f_options=options)


@pytest.mark.parametrize("name", ALL)
def test_bad_call_option_values_fail_when_the_backward_is_built(name):
    for option, value in [("check_every", 0), ("divergence_factor", float("nan")), ("return_best", "no")]:
        with pytest.raises(ValueError, match=f"^{name}: `{option}`"):
            ImplicitAdjoint(name, b_options={option: value})


def test_one_vocabulary():
    adjoint = ImplicitAdjoint(b_solver="neumann", b_max_iter=7, b_tol=1e-4, b_stop_mode="abs",
                              b_options={"damping": 0.5, "check_every": 2})
    assert (adjoint.name, adjoint.max_iter, adjoint.tol, adjoint.stop_mode) == ("neumann", 7, 1e-4, "abs")
    assert adjoint.solver.damping == 0.5 and adjoint.call_options == {"check_every": 2}
    # No other names: the solver's options are one dict, the old argument names are gone.
    for old in ("max_iter", "tol", "stop_mode", "solver", "backward", "damping", "options"):
        with pytest.raises(TypeError, match="unexpected keyword argument"):
            ImplicitAdjoint("neumann", **{old: 1})
        with pytest.raises(TypeError, match="unexpected keyword argument"):
            implicit_grad(lambda a, x: a, torch.zeros(1, 2), torch.zeros(1, 2), **{old: 1})
    for budget in (-1, 0, 2.0, True):  # the Jacobian-free gradient is phantom with steps=0, not a zero budget
        with pytest.raises(ValueError, match=f"^`b_max_iter` must be an int >= 1, got {budget!r}; for the "
                                             "Jacobian-free gradient use b_solver phantom with b_options steps=0$"):
            ImplicitAdjoint("broyden", b_max_iter=budget)
    jacobian_free = ImplicitAdjoint("phantom", b_max_iter=1, b_options={"steps": 0})  # the one switch
    assert (jacobian_free.solver.steps, jacobian_free.max_iter) == (0, 1)
    with pytest.raises(TypeError, match="`b_options` must be a dict, got list"):
        ImplicitAdjoint("broyden", b_options=[("memory", 3)])
    with pytest.raises(ValueError, match="`f_tol` must be"):
        producers.get_producer("analytic", f_tol=0.0)
    with pytest.raises(ValueError, match="unknown option.*step_size"):
        solvers.get_solver("neumann").with_options(step_size=0.5)
    assert solvers.Registry is solvers._names.Registry and solvers.check_settings is solvers._options.check_settings
    assert {"Registry", "check_settings", "configure", "CALL_OPTIONS"} <= set(solvers.__all__)


def test_set_backward_takes_the_constructor_names():
    from implicit_snn import FeedbackSNN  # noqa: F401  (the classifier's usual network)
    import models

    model = models.build_model("f400", b_solver="anderson", b_max_iter=9, b_tol=1e-5, b_stop_mode="abs",
                               b_options={"memory": 4, "check_every": 2})
    adjoint = model.adjoint
    assert (type(adjoint.solver).__name__, adjoint.solver.memory, adjoint.max_iter, adjoint.tol, adjoint.stop_mode) \
        == ("Anderson", 4, 9, 1e-5, "abs")
    assert adjoint.call_options == {"check_every": 2}
    model.set_backward("fixed_point", b_max_iter=3, b_tol=1e-3, b_options={"damping": 0.5, "throw": True})
    assert (model.adjoint.solver.damping, model.adjoint.max_iter, model.adjoint.call_options) == (0.5, 3, {"throw": True})
    with pytest.raises(TypeError):
        model.set_backward("fixed_point", max_iter=3)
    with pytest.raises(ValueError, match="^spide: `check_every`"):
        model.set_backward("spide", b_options={"check_every": 2})
    model.set_backward(b_solver="spide", b_max_iter=12)
    assert (type(model.adjoint.solver).__name__, model.adjoint.name, model.adjoint.max_iter) == ("SPIDE", "spide", 12)
    # A preset's backward options belong to its backward solver: another solver does not inherit them.
    nmnist = models.build_model("f64c5_nmnist", b_solver="broyden")
    assert type(nmnist.adjoint.solver).__name__ == "Broyden"
    assert models.get_preset("f64c5_nmnist").b_solver == "fixed_point"
    damped = models.build_model("f64c5_nmnist")
    assert (type(damped.adjoint.solver).__name__, damped.adjoint.solver.damping) == ("FixedPoint", 0.5)
