"""Validation of solver options, so that a bad setting fails at construction with a clear message."""

from __future__ import annotations

from typing import Any


def check_int(owner: str, name: str, value: Any, *, minimum: int) -> None:
    """Raise ``ValueError`` unless ``value`` is an int of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{owner}: `{name}` must be an int >= {minimum}, got {value!r}")


def check_range(owner: str, name: str, value: Any, low: float, high: float, *, low_open: bool = True) -> None:
    """Raise ``ValueError`` unless ``low < value <= high`` (or ``low <= value`` with ``low_open=False``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise ValueError(f"{owner}: `{name}` must be in {bracket}{low}, {high}], got {value!r}")
