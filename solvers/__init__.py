"""Fixed-point solvers for batched problems z = g(z), behind one registry.

Every solver is called as ``solver(g, z0, *, max_iter, tol, stop_mode="rel", **options)`` and
returns a ``SolverResult`` with per-sample residuals and convergence flags; ``options`` are the
solver's own options and the call options ``CALL_OPTIONS``, which ``configure`` splits and
validates once. Knows nothing of spiking networks.
"""

from ._anderson import Anderson
from ._broyden import Broyden
from ._driver import FixedPointSolver, IterState
from ._exact import Exact
from ._fixed_point import FixedPoint
from ._gmres import GMRES
from ._maps import AffineMap, BatchedMap, is_declared_affine
from ._names import Registry
from ._neumann import Neumann
from ._options import CALL_OPTIONS, check_settings, configure
from ._phantom import Phantom
from ._registry import (
    available_solvers, check_budget, describe_solvers, get_solver, nonlinear_solvers, register_solver, solves_nonlinear,
)
from ._result import ConvergenceError, SolverResult, SolverStatus
from ._spide import SPIDE
from ._torchdeq import TorchDEQSolver

for _name, _solver in [
    ("broyden", Broyden()),
    ("anderson", Anderson()),
    ("fixed_point", FixedPoint()),
    ("neumann", Neumann()),
    ("exact", Exact()),
    ("gmres", GMRES()),
    ("phantom", Phantom()),
    ("spide", SPIDE()),
    ("torchdeq_broyden", TorchDEQSolver("broyden")),
    ("torchdeq_anderson", TorchDEQSolver("anderson")),
    ("torchdeq_fixed_point_iter", TorchDEQSolver("fixed_point_iter")),
]:
    register_solver(_name)(_solver)
del _name, _solver

__all__ = [
    "CALL_OPTIONS", "AffineMap", "Anderson", "BatchedMap", "Broyden", "ConvergenceError", "Exact", "FixedPoint",
    "FixedPointSolver", "GMRES", "IterState", "Neumann", "Phantom", "Registry", "SPIDE", "SolverResult",
    "SolverStatus", "TorchDEQSolver",
    "available_solvers", "check_budget", "check_settings", "configure", "describe_solvers", "get_solver",
    "is_declared_affine", "nonlinear_solvers", "register_solver", "solves_nonlinear",
]
