"""Strategies by name (for TOML experiments) and from saved state (for checkpoints)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from common.errors import ConfigurationError
from researcher.strategies.default_strategy import DefaultStrategy, SamplingStrategy, Strategy

__all__ = ["STRATEGIES", "build_strategy", "strategy_from_state"]

#: Names a TOML experiment may give in `[strategy] name = ...`.
STRATEGIES: dict[str, type[Strategy]] = {"default": DefaultStrategy, "sampling": SamplingStrategy}


def build_strategy(name: str, params: Mapping[str, Any]) -> Strategy:
    """Instantiate the strategy called `name` with keyword `params`."""
    cls = STRATEGIES.get(name.lower())
    if cls is None:
        raise ConfigurationError(f"unknown strategy {name!r}; known: {sorted(STRATEGIES)}")
    try:
        return cls(**dict(params))
    except TypeError as exc:
        raise ConfigurationError(f"strategy {name!r} does not take these settings: {exc}") from exc


def strategy_from_state(state: Mapping[str, Any]) -> Strategy:
    """Rebuild a strategy from its `get_state()`."""
    by_class = {cls.__name__: cls for cls in STRATEGIES.values()}
    cls = by_class.get(str(state.get("class")))
    if cls is None:
        raise ConfigurationError(
            f"saved strategy {state.get('class')!r} is not one of {sorted(by_class)}: "
            "set the strategy again with set_strategy(...) after loading"
        )
    strategy = cls()
    strategy.set_state(state)
    return strategy
