"""The producer registry: names to producer classes, built with options on request."""

from __future__ import annotations

import inspect
from typing import Any, Callable, TypeVar

from solvers import Registry

from ._base import Producer

T = TypeVar("T", bound=type)
PRODUCERS: Registry[type[Producer]] = Registry("producer")


def register_producer(name: str) -> Callable[[T], T]:
    """Decorator registering a ``Producer`` subclass under ``name`` (a taken name is an error)."""
    def decorate(cls: T) -> T:
        if not (inspect.isclass(cls) and issubclass(cls, Producer)):
            raise TypeError(f"register_producer({name!r}) needs a Producer subclass, got {cls!r}")
        PRODUCERS.add(name, cls)
        return cls

    return decorate


def available_producers() -> list[str]:
    """Names of all registered producers, sorted."""
    return PRODUCERS.names()


def producer_options(name: str) -> list[str]:
    """The options ``get_producer(name, ...)`` accepts (its constructor's parameters), in order."""
    return list(inspect.signature(PRODUCERS.get(name)).parameters)


def producer_defaults(name: str) -> dict[str, Any]:
    """The options of ``get_producer(name, ...)`` that have a default, with that default."""
    parameters = inspect.signature(PRODUCERS.get(name)).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


def get_producer(name: str, **options: Any) -> Producer:
    """The registry's constructor: the producer ``name`` built with keyword ``options``
    (``get_producer("lif", time_steps=5)``); unknown names list the known ones, unknown options
    raise. Where a producer is chosen by settings (``ImplicitClassifier``, ``set_producer``,
    ``models.build_model``) its options are one dict, ``producer_options``, passed on here."""
    cls = PRODUCERS.get(name)
    allowed = producer_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"producer {name!r} got unknown option(s) {unknown}; its options are {allowed}")
    return cls(**options)


def describe_producers() -> dict[str, str]:
    """One line per registered producer: the first line of its docstring."""
    return PRODUCERS.describe()
