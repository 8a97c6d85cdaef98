"""Round policies: node selection, waiting, deadlines and the verdict on answers."""

from researcher.rounds.policy import Strategy
from researcher.strategies.default_strategy import DefaultStrategy, SamplingStrategy
from researcher.strategies.registry import (
    STRATEGIES,
    build_strategy,
    register_strategy,
    strategy_from_state,
)

register_strategy("default")(DefaultStrategy)
register_strategy("sampling")(SamplingStrategy)

__all__ = [
    "STRATEGIES",
    "DefaultStrategy",
    "SamplingStrategy",
    "Strategy",
    "build_strategy",
    "register_strategy",
    "strategy_from_state",
]
