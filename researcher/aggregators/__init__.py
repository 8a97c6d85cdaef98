"""Aggregators: how the nodes' parameters become the new global parameters."""

from researcher.aggregators.base import Aggregator
from researcher.aggregators.fedavg import FedAverage
from researcher.aggregators.registry import (
    AGGREGATORS,
    aggregator_from_state,
    build_aggregator,
    register_aggregator,
)

register_aggregator("fedavg")(FedAverage)

__all__ = [
    "AGGREGATORS",
    "Aggregator",
    "FedAverage",
    "aggregator_from_state",
    "build_aggregator",
    "register_aggregator",
]
