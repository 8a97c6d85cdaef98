"""Node selection strategies."""

from researcher.strategies.default_strategy import DefaultStrategy, SamplingStrategy, Strategy

__all__ = ["DefaultStrategy", "SamplingStrategy", "Strategy"]
