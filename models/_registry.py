"""Preset registry: names to model builders, and ``build_model`` for a name or a spec string."""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch

from solvers import Registry

from ._spec import from_spec

Builder = Callable[..., torch.nn.Module]
MODELS: Registry[Builder] = Registry("model")


def register_model(name: str) -> Callable[[Builder], Builder]:
    """Decorator registering ``builder(num_classes=..., **options) -> nn.Module`` under ``name``."""
    def decorate(builder: Builder) -> Builder:
        MODELS.add(name, builder)
        return builder

    return decorate


def available_models() -> list[str]:
    """Names of all registered presets, sorted."""
    return MODELS.names()


def build_model(name_or_spec: str, num_classes: Optional[int] = None, *, in_shape: Optional[Sequence[int]] = None,
                **options: Any) -> torch.nn.Module:
    """A model for ``num_classes`` classes (None: 10) by registered name or spec string.

    ``name_or_spec`` is a registered model (a preset such as ``"f400"``: its builder with
    ``options``; ``in_shape``, if given, must be the input shape it takes) or a network in the
    paper's notation such as ``"400 (F400)"`` (``from_spec(spec, in_shape, num_classes,
    **options)``, which needs ``in_shape``, the per-sample input shape). ``options`` are those of
    ``from_spec`` and ``ImplicitClassifier`` (``producer``, ``producer_options``, ``b_solver``,
    ``b_options``, ...).

    Raises:
        KeyError: an unknown name; the message lists the known ones.
        ValueError: a spec string without ``in_shape``, or an ``in_shape`` the named model does not take.
    """
    if not isinstance(name_or_spec, str):
        raise TypeError(f"`name_or_spec` must be a model name or a spec string, got {type(name_or_spec).__name__}")
    classes = 10 if num_classes is None else num_classes
    if "(" in name_or_spec:
        if in_shape is None:
            raise ValueError(f"the spec-string model {name_or_spec!r} needs `in_shape`, the per-sample input shape "
                             "(e.g. in_shape=(1, 28, 28))")
        return from_spec(name_or_spec, in_shape, classes, **options)
    try:
        builder = MODELS.get(name_or_spec)
    except KeyError as error:
        raise KeyError(f"{error.args[0]}; or a spec string such as '400 (F400)'") from None
    model = builder(num_classes=classes, **options)
    expected = getattr(getattr(model, "network", None), "in_shape", None)
    if in_shape is not None and expected is not None and tuple(expected) != tuple(in_shape):
        raise ValueError(f"model {name_or_spec} takes inputs of shape {tuple(expected)}, not {tuple(in_shape)}")
    return model


def describe_models() -> dict[str, str]:
    """One line per preset: the first line of its builder's docstring."""
    return MODELS.describe()
