"""Aggregators: how the nodes' parameters become the new global parameters."""

from researcher.aggregators.fedavg import Aggregator, FedAverage

__all__ = ["Aggregator", "FedAverage"]
