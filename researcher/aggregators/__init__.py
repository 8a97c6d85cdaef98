"""Aggregators: how the nodes' parameters become the new global parameters."""

from researcher.aggregators.base import Aggregator
from researcher.aggregators.coordinatewise import Median, TrimmedMean
from researcher.aggregators.fedavg import FedAverage
from researcher.aggregators.geometric_median import GeometricMedian
from researcher.aggregators.krum import Krum, MultiKrum
from researcher.aggregators.registry import (
    AGGREGATORS,
    aggregator_from_state,
    build_aggregator,
    register_aggregator,
)
from researcher.aggregators.stored import DEFAULT_MEMORY_BUDGET_MB, StoredUpdatesAggregator
from researcher.aggregators.update_store import UpdateStore

register_aggregator("fedavg")(FedAverage)
register_aggregator("median")(Median)
register_aggregator("trimmed-mean")(TrimmedMean)
register_aggregator("krum")(Krum)
register_aggregator("multi-krum")(MultiKrum)
register_aggregator("geometric-median")(GeometricMedian)

__all__ = [
    "AGGREGATORS",
    "DEFAULT_MEMORY_BUDGET_MB",
    "Aggregator",
    "FedAverage",
    "GeometricMedian",
    "Krum",
    "Median",
    "MultiKrum",
    "StoredUpdatesAggregator",
    "TrimmedMean",
    "UpdateStore",
    "aggregator_from_state",
    "build_aggregator",
    "register_aggregator",
]
