"""Strategies by name (TOML experiments) and from saved state (checkpoints)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from common.errors import ConfigurationError
from researcher.rounds.policy import Strategy

__all__ = ["STRATEGIES", "build_strategy", "register_strategy", "strategy_from_state"]

#: name -> class of every registered strategy.
STRATEGIES: dict[str, type[Strategy]] = {}

S = TypeVar("S", bound=type[Strategy])


def register_strategy(name: str) -> Any:
    """Class decorator: make a Strategy subclass available as `name`."""

    def decorate(cls: S) -> S:
        if name in STRATEGIES and STRATEGIES[name] is not cls:
            raise ConfigurationError(f"strategy name {name!r} is already taken")
        cls.name = name
        STRATEGIES[name] = cls
        return cls

    return decorate


def build_strategy(name: str, params: Mapping[str, Any] | None = None) -> Strategy:
    """Instantiate the strategy called `name` with keyword `params`."""
    cls = STRATEGIES.get(name.lower())
    if cls is None:
        raise ConfigurationError(f"unknown strategy {name!r}; known: {sorted(STRATEGIES)}")
    try:
        return cls(**dict(params or {}))
    except TypeError as exc:
        raise ConfigurationError(f"strategy {name!r} does not take these settings: {exc}") from exc


def strategy_from_state(state: Mapping[str, Any]) -> Strategy:
    """Rebuild a strategy from its `get_state()`."""
    by_class = {cls.__name__: cls for cls in STRATEGIES.values()}
    cls = STRATEGIES.get(str(state.get("name"))) or by_class.get(str(state.get("class")))
    if cls is None:
        raise ConfigurationError(
            f"saved strategy {state.get('class')!r} is not one of {sorted(STRATEGIES)}: "
            "set the strategy again with set_strategy(...) after loading"
        )
    strategy = cls()
    strategy.set_state(state)
    return strategy
