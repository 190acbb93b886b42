"""The producer registry: names to producer classes, built with options on request."""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable, TypeVar

from ._base import Producer

T = TypeVar("T", bound=type)
_PRODUCERS: dict[str, type[Producer]] = {}


def register_producer(name: str) -> Callable[[T], T]:
    """Decorator registering a ``Producer`` subclass under ``name`` (a taken name is an error)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a producer name must be a non-empty string, got {name!r}")

    def decorate(cls: T) -> T:
        if name in _PRODUCERS:
            raise ValueError(f"a producer named {name!r} is already registered; pick another name")
        if not (inspect.isclass(cls) and issubclass(cls, Producer)):
            raise TypeError(f"register_producer({name!r}) needs a Producer subclass, got {cls!r}")
        _PRODUCERS[name] = cls
        return cls

    return decorate


def available_producers() -> list[str]:
    """Names of all registered producers, sorted."""
    return sorted(_PRODUCERS)


def get_producer(name: str, **options: Any) -> Producer:
    """A producer built with ``options``; unknown names list the known ones, unknown options raise."""
    try:
        cls = _PRODUCERS[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), _PRODUCERS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise KeyError(
            f"unknown producer {name!r}{hint} known producers: {', '.join(available_producers())}"
        ) from None
    allowed = list(inspect.signature(cls).parameters)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"producer {name!r} got unknown option(s) {unknown}; its options are {allowed}")
    return cls(**options)


def describe_producers() -> dict[str, str]:
    """One line per registered producer: the first line of its docstring."""
    return {name: (inspect.getdoc(cls) or "").splitlines()[0] for name, cls in sorted(_PRODUCERS.items())}
