"""Aggregators by name (TOML experiments, checkpoints), as optimizer modules are."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from common.registry import Registry
from researcher.aggregators.base import Aggregator

__all__ = ["AGGREGATORS", "aggregator_from_state", "build_aggregator", "register_aggregator"]

#: name -> class of every registered aggregator.
AGGREGATORS: Registry[Aggregator] = Registry("aggregator")


def register_aggregator(name: str) -> Callable[[type[Aggregator]], type[Aggregator]]:
    """Class decorator: make an Aggregator subclass available as `name`."""
    return AGGREGATORS.register(name)


def build_aggregator(name: str, params: Mapping[str, Any] | None = None) -> Aggregator:
    """Instantiate the aggregator called `name` with keyword `params`."""
    return AGGREGATORS.build(name, params)


def aggregator_from_state(state: Mapping[str, Any]) -> Aggregator:
    """Rebuild an aggregator from its `get_state()` (checkpoints)."""
    return AGGREGATORS.from_state(state)
