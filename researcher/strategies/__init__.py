"""Node selection strategies."""

from researcher.strategies.default_strategy import DefaultStrategy, SamplingStrategy, Strategy
from researcher.strategies.registry import STRATEGIES, build_strategy, strategy_from_state

__all__ = [
    "STRATEGIES",
    "DefaultStrategy",
    "SamplingStrategy",
    "Strategy",
    "build_strategy",
    "strategy_from_state",
]
