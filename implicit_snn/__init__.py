"""implicit-snn: train feedback spiking networks by implicit differentiation on the equilibrium state.

The core pieces: ``implicit_grad`` / ``ImplicitAdjoint`` (the gradient bridge, independent of
how the equilibrium was found) and the ``producers`` registry (how it is found).
"""

from . import analysis, data, producers
from ._adjoint import ImplicitAdjoint, implicit_grad
from .classifier import ImplicitClassifier
from .layers import BNMode, SynapticLayer, unit_norm_init_
from .network import FeedbackSNN, PassState
from .spectral import SpectralNorm

__version__ = "0.1.0"

__all__ = [
    "BNMode", "FeedbackSNN", "ImplicitAdjoint", "ImplicitClassifier", "PassState", "SpectralNorm", "SynapticLayer",
    "analysis", "data", "implicit_grad", "producers", "unit_norm_init_", "__version__",
]
