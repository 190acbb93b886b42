"""No solver reports SUCCESS that the residual measured at its result does not bear out, on a
nonlinear map: each registered solver as the analytic producer's forward (or refused there, in
one line, when it solves affine maps only), and each called directly on a nonlinear map."""

import pytest
import torch

import models
import solvers
from implicit_snn import producers
from implicit_snn.app.cli import main
from solvers import SolverStatus
from tests.helpers import cli_error, true_residuals

TOL = 1e-6
AFFINE_ONLY = {"gmres", "neumann", "spide"}


def nonlinear_network(seed=0):
    """A two-layer feedback network in eval mode whose f is far from affine: a strong input drives
    many neurons into σ's clamps, so that the map's Jacobian changes along any solver's path."""
    torch.manual_seed(seed)
    model = models.from_spec("24-16 (F24)", (12,), 4, dropout=0.0).double().eval()
    x = 3.0 * torch.randn(16, 12, dtype=torch.float64)
    return model.network, x


def test_the_affine_only_solvers_are_exactly_those_the_registry_says():
    assert {n for n in solvers.available_solvers() if not solvers.solves_nonlinear(n)} == AFFINE_ONLY
    assert set(solvers.nonlinear_solvers()) == set(solvers.available_solvers()) - AFFINE_ONLY


@pytest.mark.parametrize("name", solvers.available_solvers())
def test_every_solver_as_the_analytic_forward_is_refused_or_reports_the_true_residual(name):
    network, x = nonlinear_network()
    if name in AFFINE_ONLY:
        with pytest.raises(ValueError) as info:
            producers.get_producer("analytic", f_solver=name)
        message = str(info.value)
        assert "\n" not in message and message.startswith(f"`f_solver` {name!r} solves affine maps only")
        assert "broyden" in message and "gmres" not in message.split("use one of")[1]
        return
    options = {"steps": 30} if name == "phantom" else {}
    producer = producers.get_producer("analytic", f_solver=name, f_max_iter=60, f_tol=TOL, f_options=options)
    eq = producer(network, x)
    result = eq.extras["solver_result"]
    with torch.no_grad():
        abs_res, rel_res = true_residuals(lambda a: network.fixed_point_map(a, *eq.f_args), eq.a)
    torch.testing.assert_close(result.abs_residual, abs_res, rtol=1e-9, atol=1e-15)
    torch.testing.assert_close(result.rel_residual, rel_res, rtol=1e-9, atol=1e-15)
    assert result.converged.tolist() == (rel_res <= TOL).tolist()
    assert result.success == bool((rel_res <= TOL).all())
    assert eq.stats["forward_status"] == result.status.name


@pytest.mark.parametrize("name", solvers.available_solvers())
def test_every_solver_called_directly_on_a_nonlinear_map_reports_the_residual_at_its_result(name):
    """The library's own promise, beyond the forward's refusal: even a solver built on linearity,
    handed a nonlinear map that is not declared affine, reports what it measured."""
    network, x = nonlinear_network(seed=1)
    f_args = network.map_inputs(x)

    def g(a):
        return network.fixed_point_map(a, *f_args)

    options = {"steps": 20} if name == "phantom" else {}
    return_best = {"return_best": False} if name in ("phantom", "spide") else {}
    result = solvers.get_solver(name)(g, network.initial_state(x), max_iter=40, tol=TOL, **return_best, **options)
    with torch.no_grad():
        abs_res, rel_res = true_residuals(g, result.z)
    torch.testing.assert_close(result.abs_residual, abs_res, rtol=1e-9, atol=1e-15)
    torch.testing.assert_close(result.rel_residual, rel_res, rtol=1e-9, atol=1e-15)
    assert result.success == bool((rel_res <= TOL).all())


def test_gmres_on_the_nonlinear_forward_map_is_not_a_false_success():
    """The case that was reported: GMRES's recurrence on f claims a residual below tol, the
    measurement at its result is orders of magnitude above; the result says so."""
    network, x = nonlinear_network(seed=2)
    f_args = network.map_inputs(x)

    def g(a):
        return network.fixed_point_map(a, *f_args)

    z0 = network.initial_state(x)
    offset = g(torch.zeros_like(z0))
    false_declaration = solvers.AffineMap(lambda v: g(v) - offset, offset, apply=g)  # g − g(0) is not linear
    claimed = solvers.get_solver("gmres")(false_declaration, z0, max_iter=60, tol=TOL)
    measured = solvers.get_solver("gmres")(g, z0, max_iter=60, tol=TOL)
    with torch.no_grad():
        _, true_rel = true_residuals(g, claimed.z)
    assert claimed.success and float(true_rel.max()) > 100 * TOL  # what an affine-trusting GMRES would report
    assert not measured.success and measured.status is SolverStatus.NOT_AFFINE
    assert float(measured.rel_residual.max()) > 100 * TOL


@pytest.mark.parametrize("command", [["train"], ["eval", "run"], ["analyze", "run"]])
def test_the_forward_solver_flags_refuse_solvers_for_affine_maps_in_one_line(command, capsys):
    for name in sorted(AFFINE_ONLY):
        message = cli_error([*command, "--f_solver", name], capsys)
        assert "invalid choice" in message and repr(name) in message and "broyden" in message
