"""Aggregators by name (TOML experiments, checkpoints), as optimizer modules are."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from common.errors import ConfigurationError
from researcher.aggregators.base import Aggregator

__all__ = ["AGGREGATORS", "aggregator_from_state", "build_aggregator", "register_aggregator"]

#: name -> class of every registered aggregator.
AGGREGATORS: dict[str, type[Aggregator]] = {}

A = TypeVar("A", bound=type[Aggregator])


def register_aggregator(name: str) -> Any:
    """Class decorator: make an Aggregator subclass available as `name`."""

    def decorate(cls: A) -> A:
        if name in AGGREGATORS and AGGREGATORS[name] is not cls:
            raise ConfigurationError(f"aggregator name {name!r} is already taken")
        cls.name = name
        AGGREGATORS[name] = cls
        return cls

    return decorate


def build_aggregator(name: str, params: Mapping[str, Any] | None = None) -> Aggregator:
    """Instantiate the aggregator called `name` with keyword `params`."""
    cls = AGGREGATORS.get(name.lower())
    if cls is None:
        raise ConfigurationError(f"unknown aggregator {name!r}; known: {sorted(AGGREGATORS)}")
    try:
        return cls(**dict(params or {}))
    except TypeError as exc:
        raise ConfigurationError(
            f"aggregator {name!r} does not take these settings: {exc}"
        ) from exc


def aggregator_from_state(state: Mapping[str, Any]) -> Aggregator:
    """Rebuild an aggregator from its `get_state()` (checkpoints)."""
    by_class = {cls.__name__: cls for cls in AGGREGATORS.values()}
    cls = AGGREGATORS.get(str(state.get("name"))) or by_class.get(str(state.get("class")))
    if cls is None:
        raise ConfigurationError(
            f"saved aggregator {state.get('class')!r} is not one of {sorted(AGGREGATORS)}: "
            "set the aggregator again with set_aggregator(...) after loading"
        )
    aggregator = cls()
    aggregator.set_state(state)
    return aggregator
