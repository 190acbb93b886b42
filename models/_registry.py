"""Preset registry: names to model builders."""

from __future__ import annotations

from typing import Any, Callable

import torch

from solvers import Registry

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


def build_model(name: str, num_classes: int = 10, **options: Any) -> torch.nn.Module:
    """Build the preset ``name`` for ``num_classes`` classes with its options.

    Raises:
        KeyError: unknown name; the message lists the known presets.
    """
    return MODELS.get(name)(num_classes=num_classes, **options)


def describe_models() -> dict[str, str]:
    """One line per preset: the first line of its builder's docstring."""
    return MODELS.describe()
