"""Equilibrium producers: black boxes that find a* for a network and an input, without grad."""

from ._analytic import AnalyticProducer
from ._base import Equilibrium, ImplicitNetwork, Producer, couples_samples
from ._registry import (available_producers, describe_producers, get_producer, producer_defaults, producer_options,
                        register_producer)
from ..simulation import SpikingNetwork
from ._spiking import IFProducer, LIFProducer

register_producer("analytic")(AnalyticProducer)
register_producer("if")(IFProducer)
register_producer("lif")(LIFProducer)

__all__ = [
    "AnalyticProducer", "Equilibrium", "IFProducer", "ImplicitNetwork", "LIFProducer", "Producer", "SpikingNetwork",
    "available_producers", "couples_samples", "describe_producers", "get_producer", "producer_defaults", "producer_options",
    "register_producer",
]
