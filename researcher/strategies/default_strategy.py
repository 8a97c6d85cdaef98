"""The two selection strategies: every eligible node, or a seeded sample of them."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from common.errors import ConfigurationError
from researcher.rounds.policy import Strategy

__all__ = ["DefaultStrategy", "SamplingStrategy", "Strategy"]


class DefaultStrategy(Strategy):
    """Every eligible node trains every round; the round continues with those that answered.

    `min_nodes` is also how many matching nodes the experiment waits for before round 1.
    """

    def select(self, eligible: Sequence[str], round_number: int) -> list[str]:
        self._check_enough(eligible)
        return sorted(eligible)


class SamplingStrategy(Strategy):
    """Samples `fraction` of the eligible nodes each round, or `count` of them when given
    (at least `min_nodes` either way), seeded."""

    def __init__(
        self, fraction: float = 1.0, min_nodes: int = 1, seed: int = 0, count: int | None = None
    ) -> None:
        super().__init__(min_nodes)
        if not 0.0 < fraction <= 1.0:
            raise ConfigurationError(f"fraction must be in (0, 1], got {fraction}")
        if count is not None and (
            not isinstance(count, int) or isinstance(count, bool) or count < 1
        ):
            raise ConfigurationError(f"count must be a whole number of nodes >= 1, got {count!r}")
        self.fraction = fraction
        self.seed = seed
        self.count = count

    def select(self, eligible: Sequence[str], round_number: int) -> list[str]:
        self._check_enough(eligible)
        wanted = self.count if self.count is not None else round(self.fraction * len(eligible))
        count = max(self.min_nodes, wanted)
        rng = random.Random(f"{self.seed}:{round_number}")
        return sorted(rng.sample(sorted(eligible), min(count, len(eligible))))

    def get_state(self) -> dict[str, Any]:
        return {
            **super().get_state(),
            "fraction": self.fraction,
            "seed": self.seed,
            "count": self.count,
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        super().set_state(state)
        self.fraction = float(state.get("fraction", self.fraction))
        self.seed = int(state.get("seed", self.seed))
        count = state.get("count", self.count)
        self.count = None if count is None else int(count)
