"""Checks of a solve's settings and of solver options, and splitting one options dict into a
solver's own options and the driver's call options: every bad value a one-line error, before
any work."""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch

STOP_MODES = ("abs", "rel")


#: The driver's call options besides the settings ``max_iter``, ``tol``, ``stop_mode``: every
#: solver honours each of them or refuses it with a one-line ``ValueError``. An options dict of
#: an entry point (``implicit_grad``, ``ImplicitAdjoint``, ``b_options``, ``f_options``) may mix
#: them with the solver's own options; ``configure`` splits them by name.
CALL_OPTIONS = ("throw", "check_every", "return_best", "divergence_factor")


def check_settings(max_iter: Any, tol: Any, stop_mode: Any, check_every: Any = 1, *, prefix: str = "") -> None:
    """Reject bad solve settings with a one-line message naming what is allowed.

    ``prefix`` is put before the names in the messages (``"b_"``: ``b_max_iter``, ``b_tol``, ...).
    """
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 0:
        raise ValueError(f"`{prefix}max_iter` must be an int >= 0, got {max_iter!r}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol > 0 or not math.isfinite(tol):
        raise ValueError(f"`{prefix}tol` must be a finite number > 0, got {tol!r}")
    if stop_mode not in STOP_MODES:
        raise ValueError(f"`{prefix}stop_mode` must be one of {STOP_MODES}, got {stop_mode!r}")
    if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
        raise ValueError(f"`check_every` must be an int >= 1, got {check_every!r}")


def check_call_options(owner: str, *, throw: Any = False, check_every: Any = 1, return_best: Any = True,
                       divergence_factor: Any = 1e6) -> None:
    """Reject a bad value of a call option with a one-line ``ValueError`` naming it and ``owner``."""
    for name, value in (("throw", throw), ("return_best", return_best)):
        if not isinstance(value, bool):
            raise ValueError(f"{owner}: `{name}` must be True or False, got {value!r}")
    if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
        raise ValueError(f"{owner}: `check_every` must be an int >= 1, got {check_every!r}")
    factor = divergence_factor
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor > 0:
        raise ValueError(f"{owner}: `divergence_factor` must be a number > 0 (inf: never), got {factor!r}")


# The arguments every solve takes itself, which an options dict must not carry.
SOLVE_SETTINGS = ("max_iter", "tol", "stop_mode", "coupled")


def unknown_options(owner: str, unknown: list[str], own: list[str], calls: tuple[str, ...]) -> ValueError:
    """The one-line error for option names a solver does not know, listing exactly those it accepts
    (and saying where a solve's own settings go, if one of them was passed as an option)."""
    settings = [name for name in unknown if name in SOLVE_SETTINGS]
    where = (f"; {', '.join(f'`{n}`' for n in settings)} {'is' if len(settings) == 1 else 'are'} not an option but "
             "a setting of the solve itself (`b_max_iter`, `b_tol`, `b_stop_mode` for the backward; `f_max_iter`, "
             "`f_tol`, `f_stop_mode` for the analytic forward)") if settings else ""
    return ValueError(
        f"{owner} got unknown option(s) {unknown}; it accepts its options {own} "
        f"and the call options {list(calls)}{where}"
    )


def configure(solver: Any, options: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Split one options dict into the solver's own options and the driver's call options.

    Returns the solver with its own options applied and the call options (``CALL_OPTIONS``) to
    pass to every call of it, both validated now: an unknown name is a ``ValueError`` listing
    exactly what this solver accepts, and a call option the solver cannot honour is refused with
    its reason. A solver without ``split_options`` (a user's own callable) gets every option at
    each call, unchecked.
    """
    if not isinstance(options, Mapping):
        raise TypeError(f"solver options must be a dict, got {type(options).__name__}")
    split = getattr(solver, "split_options", None)
    if split is None:
        return solver, dict(options)
    return split(dict(options))


def split_solver_options(solver: Any, options: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """``split_options`` of any solver with ``option_names``, ``owner``, ``ACCEPTED_CALL_OPTIONS``,
    ``check_call_options`` and ``with_options``: unknown names refused, call options checked."""
    own_names = solver.option_names
    unknown = sorted(set(options) - set(own_names) - set(CALL_OPTIONS))
    if unknown:
        raise unknown_options(solver.owner, unknown, own_names, solver.ACCEPTED_CALL_OPTIONS)
    calls = {name: value for name, value in options.items() if name in CALL_OPTIONS}
    solver.check_call_options(**calls)
    return solver.with_options(**{n: v for n, v in options.items() if n in own_names}), calls


def check_call(z0: Any, max_iter: Any, tol: Any, stop_mode: Any, check_every: Any) -> None:
    """Reject a bad initial guess or bad settings before any work is done."""
    if not isinstance(z0, torch.Tensor):
        raise TypeError(f"`z0` must be a torch.Tensor, got {type(z0).__name__}")
    if z0.dim() < 2:
        raise ValueError(
            f"`z0` must be batched with shape [B, ...] (at least 2 dims), got shape {tuple(z0.shape)}; "
            "for a single problem use `z0[None]`"
        )
    if not z0.is_floating_point():
        raise TypeError(f"`z0` must be a floating-point tensor, got dtype {z0.dtype}")
    check_settings(max_iter, tol, stop_mode, check_every)


def check_flag(name: str, value: Any) -> None:
    """Reject a non-bool switch (a string "False" would silently count as true)."""
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be True or False, got {value!r}")
