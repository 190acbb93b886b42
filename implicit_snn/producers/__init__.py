"""Equilibrium producers: black boxes that find a* for a network and an input, without grad."""

from ._analytic import AnalyticProducer
from ._base import Equilibrium, ImplicitNetwork, Producer
from ._registry import available_producers, describe_producers, get_producer, register_producer

register_producer("analytic")(AnalyticProducer)

__all__ = [
    "AnalyticProducer", "Equilibrium", "ImplicitNetwork", "Producer",
    "available_producers", "describe_producers", "get_producer", "register_producer",
]
