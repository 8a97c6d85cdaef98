"""Node selection strategies: which eligible nodes train in a round, and what failures allow."""

from __future__ import annotations

import abc
import random
from collections.abc import Mapping, Sequence

from common.errors import ConfigurationError, RoundFailedError

__all__ = ["DefaultStrategy", "SamplingStrategy", "Strategy"]


class Strategy(abc.ABC):
    """Chooses nodes per round and decides whether a round with failures can continue."""

    def __init__(self, min_nodes: int = 1) -> None:
        if min_nodes < 1:
            raise ConfigurationError(f"min_nodes must be at least 1, got {min_nodes}")
        self.min_nodes = min_nodes

    @abc.abstractmethod
    def select(self, eligible: Sequence[str], round_number: int) -> list[str]:
        """The node ids that train in round `round_number`, among `eligible` ones."""

    def check_answers(self, answered: Sequence[str], failures: Mapping[str, str]) -> None:
        """Raise RoundFailedError when too few nodes answered; the reasons are in the message."""
        if len(answered) < self.min_nodes:
            reasons = "; ".join(f"{node}: {why}" for node, why in failures.items()) or "no reply"
            raise RoundFailedError(
                f"only {len(answered)} node(s) answered, at least {self.min_nodes} needed ({reasons})"
            )

    def get_state(self) -> dict[str, object]:
        return {"class": type(self).__name__, "min_nodes": self.min_nodes}

    def set_state(self, state: Mapping[str, object]) -> None:
        self.min_nodes = int(state.get("min_nodes", self.min_nodes))  # type: ignore[call-overload]


class DefaultStrategy(Strategy):
    """Every eligible node trains every round; the round continues with those that answered.

    `min_nodes` is also how many matching nodes the experiment waits for before round 1.
    """

    def select(self, eligible: Sequence[str], round_number: int) -> list[str]:
        if len(eligible) < self.min_nodes:
            raise RoundFailedError(
                f"{len(eligible)} eligible node(s) connected, at least {self.min_nodes} needed"
            )
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
        if len(eligible) < self.min_nodes:
            raise RoundFailedError(
                f"{len(eligible)} eligible node(s) connected, at least {self.min_nodes} needed"
            )
        count = max(self.min_nodes, round(self.fraction * len(eligible)))
        rng = random.Random(f"{self.seed}:{round_number}")
        return sorted(rng.sample(sorted(eligible), min(count, len(eligible))))

    def get_state(self) -> dict[str, object]:
        return {**super().get_state(), "fraction": self.fraction, "seed": self.seed}

    def set_state(self, state: Mapping[str, object]) -> None:
        super().set_state(state)
        self.fraction = float(state.get("fraction", self.fraction))  # type: ignore[arg-type]
        self.seed = int(state.get("seed", self.seed))  # type: ignore[call-overload]
