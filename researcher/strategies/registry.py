"""Strategies by name (TOML experiments) and from saved state (checkpoints)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from common.registry import Registry
from researcher.rounds.policy import Strategy

__all__ = ["STRATEGIES", "build_strategy", "register_strategy", "strategy_from_state"]

#: name -> class of every registered strategy.
STRATEGIES: Registry[Strategy] = Registry("strategy")


def register_strategy(name: str) -> Callable[[type[Strategy]], type[Strategy]]:
    """Class decorator: make a Strategy subclass available as `name`."""
    return STRATEGIES.register(name)


def build_strategy(name: str, params: Mapping[str, Any] | None = None) -> Strategy:
    """Instantiate the strategy called `name` with keyword `params`."""
    return STRATEGIES.build(name, params)


def strategy_from_state(state: Mapping[str, Any]) -> Strategy:
    """Rebuild a strategy from its `get_state()`."""
    return STRATEGIES.from_state(state)
