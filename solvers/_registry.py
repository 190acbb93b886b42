"""The solver registry: names to ready-to-call solvers."""

from __future__ import annotations

import inspect
from typing import Any, Callable, TypeVar, Union

from ._driver import FixedPointSolver
from ._names import Registry

Solver = Callable[..., Any]
SolverLike = Union[str, Solver]
T = TypeVar("T")

SOLVERS: Registry[Solver] = Registry("solver")


def register_solver(name: str) -> Callable[[T], T]:
    """Decorator registering a solver under ``name``.

    The decorated object is a ``FixedPointSolver`` subclass (instantiated with its defaults),
    or any callable with the solver signature
    ``solver(g, z0, *, max_iter, tol, stop_mode="rel", **options) -> SolverResult``.

    Raises:
        ValueError: ``name`` is already taken or not a non-empty string.
    """
    def decorate(obj: T) -> T:
        solver = obj() if inspect.isclass(obj) and issubclass(obj, FixedPointSolver) else obj
        if not callable(solver):
            raise TypeError(f"register_solver({name!r}) needs a FixedPointSolver subclass or a callable, got {obj!r}")
        SOLVERS.add(name, solver)
        return obj

    return decorate


def available_solvers() -> list[str]:
    """Names of all registered solvers, sorted."""
    return SOLVERS.names()


def get_solver(name: SolverLike) -> Solver:
    """The solver registered under ``name``; a solver object passed in is returned unchanged.

    Raises:
        KeyError: unknown name; the message lists the known names and the closest match.
    """
    if not isinstance(name, str):
        if callable(name):
            return name
        raise TypeError(f"expected a solver name or a solver, got {type(name).__name__}")
    return SOLVERS.get(name)


def describe_solvers() -> dict[str, str]:
    """One line per registered solver: its ``description`` or the first line of its docstring."""
    return SOLVERS.describe()


def solves_nonlinear(solver: SolverLike) -> bool:
    """Whether a solver (name or object) is meant for nonlinear maps; False for those built on
    linearity (``gmres``, ``neumann``, ``spide``). A user's own callable is taken at its word:
    True unless it has ``SOLVES_NONLINEAR = False``."""
    return getattr(get_solver(solver), "SOLVES_NONLINEAR", True) is not False


def nonlinear_solvers() -> list[str]:
    """Names of the registered solvers meant for nonlinear maps (the analytic forward's choices)."""
    return [name for name in available_solvers() if solves_nonlinear(name)]


def check_budget(solver: SolverLike, max_iter: int, *, prefix: str = "") -> None:
    """Refuse, with a one-line ``ValueError``, a fixed-budget option of ``solver`` larger than
    the ``max_iter`` that caps it (``phantom``'s ``steps``), so that a contradiction is an error
    when the solve is set up, not at its first call or a silent cap. ``prefix`` names the setting (``"b_"``: ``b_max_iter``)."""
    check = getattr(get_solver(solver), "check_budget", None)
    if check is not None:
        check(max_iter, setting=f"{prefix}max_iter")
