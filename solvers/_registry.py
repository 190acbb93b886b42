"""The solver registry: names to ready-to-call solvers."""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable, TypeVar, Union

from ._driver import FixedPointSolver

Solver = Callable[..., Any]
SolverLike = Union[str, Solver]
T = TypeVar("T")

_SOLVERS: dict[str, Solver] = {}


def register_solver(name: str) -> Callable[[T], T]:
    """Decorator registering a solver under ``name``.

    The decorated object is a ``FixedPointSolver`` subclass (instantiated with its defaults),
    or any callable with the solver signature
    ``solver(g, z0, *, max_iter, tol, stop_mode="rel", **options) -> SolverResult``.

    Raises:
        ValueError: ``name`` is already taken or not a non-empty string.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"a solver name must be a non-empty string, got {name!r}")

    def decorate(obj: T) -> T:
        if name in _SOLVERS:
            raise ValueError(f"a solver named {name!r} is already registered; pick another name")
        solver = obj() if inspect.isclass(obj) and issubclass(obj, FixedPointSolver) else obj
        if not callable(solver):
            raise TypeError(f"register_solver({name!r}) needs a FixedPointSolver subclass or a callable, got {obj!r}")
        _SOLVERS[name] = solver
        return obj

    return decorate


def available_solvers() -> list[str]:
    """Names of all registered solvers, sorted."""
    return sorted(_SOLVERS)


def get_solver(name: SolverLike) -> Solver:
    """The solver registered under ``name``; a solver object passed in is returned unchanged.

    Raises:
        KeyError: unknown name; the message lists the known names and the closest match.
    """
    if not isinstance(name, str):
        if callable(name):
            return name
        raise TypeError(f"expected a solver name or a solver, got {type(name).__name__}")
    try:
        return _SOLVERS[name]
    except KeyError:
        close = difflib.get_close_matches(name, _SOLVERS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise KeyError(f"unknown solver {name!r}{hint} known solvers: {', '.join(available_solvers())}") from None


def describe_solvers() -> dict[str, str]:
    """One line per registered solver: its ``description`` or the first line of its docstring."""
    lines = {}
    for name in available_solvers():
        solver = _SOLVERS[name]
        text = getattr(solver, "description", None) or inspect.getdoc(solver) or ""
        lines[name] = text.strip().splitlines()[0] if text.strip() else ""
    return lines
