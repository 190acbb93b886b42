"""implicit-snn installs three top-level packages (``implicit_snn``, ``solvers``, ``models``);
a user's own ``solvers.py`` or ``models.py`` earlier on ``sys.path`` would hide the other two."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

_INSTALLED_BESIDE = Path(__file__).resolve().parent.parent  # the folder holding implicit_snn/, solvers/, models/


def _shadowing_origin(name: str) -> str | None:
    """Where ``import name`` would load from, if that is not our package beside ``implicit_snn``."""
    spec = importlib.util.find_spec(name)
    origin = spec.origin if spec is not None else None
    if origin is not None and Path(origin).resolve().parent.parent == _INSTALLED_BESIDE:
        return None
    return origin or "nowhere"


def require_sibling_package(name: str) -> None:
    """Make sure ``import name`` gives implicit-snn's package, or fail with a message that says why.

    Under ``python -m implicit_snn`` (or ``torchrun -m``) the working directory is first on
    ``sys.path`` only because of ``-m``; the command needs nothing from it, so a module there
    that would hide ours is taken off the path. Anywhere else the user's module wins the import,
    and this is an ImportError naming it.
    """
    origin = _shadowing_origin(name)
    if origin is None:
        return
    # While ``python -m`` looks for the module to run, sys.argv[0] is "-m".
    first = Path(sys.path[0] or os.curdir).resolve() if sys.path else None
    if sys.argv[:1] == ["-m"] and first is not None and first != _INSTALLED_BESIDE:
        sys.path.pop(0)
        if _shadowing_origin(name) is None:
            return
        origin = _shadowing_origin(name)
    raise ImportError(
        f"`import {name}` finds {origin}, not implicit-snn's {name} package (in {_INSTALLED_BESIDE}): a module "
        f"named {name} earlier on sys.path, often a {name}.py in the working directory, hides it; rename that "
        "module or work from another directory")
