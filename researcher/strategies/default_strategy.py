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
    """Samples `fraction` of the eligible nodes each round (at least `min_nodes`), seeded."""

    def __init__(self, fraction: float = 1.0, min_nodes: int = 1, seed: int = 0) -> None:
        super().__init__(min_nodes)
        if not 0.0 < fraction <= 1.0:
            raise ConfigurationError(f"fraction must be in (0, 1], got {fraction}")
        self.fraction = fraction
        self.seed = seed

    def select(self, eligible: Sequence[str], round_number: int) -> list[str]:
        self._check_enough(eligible)
        count = max(self.min_nodes, round(self.fraction * len(eligible)))
        rng = random.Random(f"{self.seed}:{round_number}")
        return sorted(rng.sample(sorted(eligible), min(count, len(eligible))))

    def get_state(self) -> dict[str, Any]:
        return {**super().get_state(), "fraction": self.fraction, "seed": self.seed}

    def set_state(self, state: Mapping[str, Any]) -> None:
        super().set_state(state)
        self.fraction = float(state.get("fraction", self.fraction))
        self.seed = int(state.get("seed", self.seed))
