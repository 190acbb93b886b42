"""The model zoo: the paper's feedback SNNs by preset name, or any network from its spec string.

Presets: ``f400`` (Fashion-MNIST), ``f64c5`` (MNIST), ``f64c5_nmnist`` (N-MNIST spikes),
``alexnet_f`` and ``cifarnet_f`` (CIFAR), and for event data ``f512c5_cifar10dvs`` (CIFAR10-DVS),
``f64c5_dvsgesture`` (DVS128 Gesture) and ``f400_shd`` (SHD). Every model is an
``implicit_snn.ImplicitClassifier``.
"""

from ._registry import available_models, build_model, describe_models, register_model
from ._spec import NetworkSpec, build_network, from_spec, parse_spec
from . import _presets  # noqa: F401  (registers the presets)
from ._presets import PRESETS, Preset, get_preset

__all__ = [
    "NetworkSpec", "PRESETS", "Preset", "available_models", "build_model", "build_network", "describe_models", "from_spec",
    "get_preset", "parse_spec", "register_model",
]
