"""The aggregator interface: how validated node replies become the round's parameters.

An aggregator folds replies one at a time (`start`, `add` per reply, `finish`), so memory
stays at its own state, never one copy per node unless the method needs it. It states
whether it can work from a secure sum (`supports_secure_sum`): SecAgg reveals only the
weighted sum of the nodes' parameters, which a mean can use and a median cannot.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from common.errors import ConfigurationError

__all__ = ["Aggregator"]


class Aggregator(abc.ABC):
    """Base class: `start()`, then `add()` per reply, then `finish()` gives the new parameters.

    `add` validates the whole reply before it folds anything: a refused reply raises a
    `RoundFailedError` and leaves the aggregate as it was.
    """

    #: Registry name (TOML `[aggregator] name = ...`), set by `researcher.aggregators.register`.
    name: ClassVar[str] = ""

    #: True when `add_secure_sum` works: the aggregate is a function of the weighted sum.
    supports_secure_sum: ClassVar[bool] = False

    def use_scratch_folder(self, folder: Path) -> None:  # noqa: B027 - optional hook
        """Where the aggregator may write temporary files (the Experiment gives its folder)."""

    def release(self) -> None:  # noqa: B027 - optional hook
        """Drop what is kept from round to round for speed (a run ended); the next round
        allocates it again."""

    @abc.abstractmethod
    def start(self, template: Mapping[str, np.ndarray]) -> None:
        """Begin a round whose parameters look like `template`."""

    @abc.abstractmethod
    def add(self, node_id: str, params: Mapping[str, np.ndarray], weight: float) -> None:
        """Fold one node's parameters with its weight (its training sample count)."""

    def add_secure_sum(self, sums: Mapping[str, np.ndarray], total_weight: float) -> None:
        """Fold the unmasked sum of `weight * params` over the nodes (SecAgg's result)."""
        raise ConfigurationError(
            f"the {type(self).__name__} aggregator needs each node's parameters and cannot "
            "work from a secure sum: use FedAverage with SecAgg, or "
            "SecureAggregation(protect_parameters=False)"
        )

    @abc.abstractmethod
    def finish(self) -> dict[str, np.ndarray]:
        """The aggregated parameters of the round."""

    def aggregate(
        self, replies: Mapping[str, tuple[Mapping[str, np.ndarray], float]]
    ) -> dict[str, np.ndarray]:
        """Aggregate a whole round at once: node_id -> (params, weight)."""
        first = next(iter(replies.values()))[0]
        self.start(first)
        for node_id, (params, weight) in replies.items():
            self.add(node_id, params, weight)
        return self.finish()

    def get_state(self) -> dict[str, Any]:
        """JSON-able settings and state, restored by `set_state` (checkpoints)."""
        return {"class": type(self).__name__, "name": self.name}

    def set_state(self, state: Mapping[str, Any]) -> None:  # noqa: B027 - optional hook
        """Aggregators without state accept any saved state of their class."""
