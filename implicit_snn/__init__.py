"""implicit-snn: train feedback spiking networks by implicit differentiation on the equilibrium state.

The core pieces: ``implicit_grad`` / ``ImplicitAdjoint`` (the gradient bridge, independent of
how the equilibrium was found) and the ``producers`` registry (how it is found).
"""

from ._siblings import require_sibling_package

require_sibling_package("solvers")

from . import analysis, data, producers, training  # noqa: E402
from ._adjoint import ImplicitAdjoint, implicit_grad  # noqa: E402
from .classifier import ImplicitClassifier  # noqa: E402
from .layers import BNMode, SynapticLayer, unit_norm_init_  # noqa: E402
from .network import FeedbackSNN, PassState  # noqa: E402
from .spectral import SpectralNorm  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "BNMode", "FeedbackSNN", "ImplicitAdjoint", "ImplicitClassifier", "PassState", "SpectralNorm", "SynapticLayer",
    "analysis", "data", "implicit_grad", "producers", "training", "unit_norm_init_", "__version__",
]
