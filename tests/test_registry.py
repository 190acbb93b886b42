"""The solver and producer registries reject mistakes and accept user extensions."""

import dataclasses

import pytest
import torch

import solvers
from implicit_snn import producers
from solvers import FixedPointSolver, IterState
from solvers._registry import SOLVERS
from tests.helpers import affine_problem


def test_required_solvers_and_baselines_are_registered():
    names = solvers.available_solvers()
    for required in ("broyden", "anderson", "fixed_point", "neumann", "exact",
                     "torchdeq_broyden", "torchdeq_anderson", "torchdeq_fixed_point_iter"):
        assert required in names
    descriptions = solvers.describe_solvers()
    assert all(descriptions[name] for name in names)
    assert "Broyden" in descriptions["broyden"]


def test_unknown_name_lists_known_solvers_and_suggests_the_closest():
    with pytest.raises(KeyError, match="did you mean 'broyden'.*known solvers: anderson, broyden"):
        solvers.get_solver("broydn")


def test_taken_name_is_an_error():
    with pytest.raises(ValueError, match="already registered"):
        solvers.register_solver("broyden")(solvers.Broyden)


def test_user_solver_class_and_function_can_be_registered_and_used():
    @dataclasses.dataclass(frozen=True)
    class HalfStep(FixedPointSolver):
        """Fixed-point iteration with damping one half (a user's own solver)."""

        def init(self, g, z0, gz0):
            return IterState(z0, gz0)

        def step(self, g, state):
            z = 0.5 * (state.z + state.gz)
            return IterState(z, g(z))

    def plain(g, z0, *, max_iter, tol, stop_mode="rel", **options):
        return solvers.get_solver("fixed_point")(g, z0, max_iter=max_iter, tol=tol, stop_mode=stop_mode, **options)

    try:
        solvers.register_solver("test_half_step")(HalfStep)
        solvers.register_solver("test_plain")(plain)
        problem = affine_problem((2, 5), 0.5)
        for name in ("test_half_step", "test_plain"):
            result = solvers.get_solver(name)(problem, problem.zeros(), max_iter=200, tol=1e-12)
            assert result.success
            torch.testing.assert_close(result.z, problem.solution, rtol=1e-10, atol=1e-10)
        assert solvers.describe_solvers()["test_half_step"].startswith("Fixed-point iteration with damping")
    finally:
        SOLVERS.remove("test_half_step")
        SOLVERS.remove("test_plain")


def test_solver_objects_pass_through_get_solver():
    custom = solvers.Anderson(memory=3)
    assert solvers.get_solver(custom) is custom


def test_producer_registry():
    assert "analytic" in producers.available_producers()
    assert producers.describe_producers()["analytic"]
    with pytest.raises(KeyError, match="did you mean 'analytic'"):
        producers.get_producer("analytc")
    with pytest.raises(TypeError, match="unknown option.*f_solvr.*its options are"):
        producers.get_producer("analytic", f_solvr="anderson")
    with pytest.raises(ValueError, match="unknown option"):
        producers.get_producer("analytic", f_solver="anderson", f_options={"mem": 3})
    with pytest.raises(ValueError, match="already registered"):
        producers.register_producer("analytic")(producers.AnalyticProducer)
