"""implicit-snn: train feedback spiking networks by implicit differentiation on the equilibrium state.

The core pieces: ``implicit_grad`` / ``ImplicitAdjoint`` (the gradient bridge, independent of
how the equilibrium was found) and the ``producers`` registry (how it is found).
"""

from . import producers
from ._adjoint import ImplicitAdjoint, implicit_grad

__version__ = "0.1.0"

__all__ = ["ImplicitAdjoint", "implicit_grad", "producers", "__version__"]
