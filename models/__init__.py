"""The model zoo: networks built on implicit_snn, by preset name.

Presets register themselves with ``register_model``; the feedback SNN presets of the paper
(f400, f64c5, f64c5_nmnist, alexnet_f, cifarnet_f) are added with the spiking producers.
"""

from ._registry import available_models, build_model, register_model

__all__ = ["available_models", "build_model", "register_model"]
