"""Preset registry: names to model builders."""

from __future__ import annotations

import difflib
from typing import Any, Callable

import torch

Builder = Callable[..., torch.nn.Module]
_MODELS: dict[str, Builder] = {}


def register_model(name: str) -> Callable[[Builder], Builder]:
    """Decorator registering ``builder(num_classes=..., **options) -> nn.Module`` under ``name``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a model name must be a non-empty string, got {name!r}")

    def decorate(builder: Builder) -> Builder:
        if name in _MODELS:
            raise ValueError(f"a model named {name!r} is already registered; pick another name")
        _MODELS[name] = builder
        return builder

    return decorate


def available_models() -> list[str]:
    """Names of all registered presets, sorted."""
    return sorted(_MODELS)


def build_model(name: str, num_classes: int = 10, **options: Any) -> torch.nn.Module:
    """Build the preset ``name`` for ``num_classes`` classes with its options.

    Raises:
        KeyError: unknown name; the message lists the known presets.
    """
    if name not in _MODELS:
        close = difflib.get_close_matches(str(name), _MODELS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        known = ", ".join(available_models()) or "(none registered yet)"
        raise KeyError(f"unknown model {name!r}{hint} known models: {known}")
    return _MODELS[name](num_classes=num_classes, **options)


def describe_models() -> dict[str, str]:
    """One line per preset: the first line of its builder's docstring."""
    return {name: (_MODELS[name].__doc__ or "").strip().splitlines()[0] for name in available_models()}
