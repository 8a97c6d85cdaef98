"""Coordinate-wise robust aggregators: the median and the trimmed mean of each parameter value.

Both are unweighted (a node's sample count does not matter: a weight would let one node
claim a majority) and hold all n updates of the round at once, in an `UpdateStore`;
they work slice by slice, so memory beyond the store is O(n x slice).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import numpy as np

from common.errors import ConfigurationError, RoundFailedError
from researcher.aggregators.stored import (
    DEFAULT_MEMORY_BUDGET_MB,
    StoredUpdatesAggregator,
    int_setting,
)
from researcher.aggregators.update_store import UpdateStore

__all__ = ["Median", "TrimmedMean"]


def _coordinatewise(
    store: UpdateStore, reduce: Callable[[np.ndarray], np.ndarray]
) -> dict[str, np.ndarray]:
    """`reduce` (rows, slice) -> (slice,) applied over every parameter slice, written
    straight into arrays of the model's dtypes."""
    out = store.empty_model()
    for name, start, stop in store.slices():
        out[name].reshape(-1)[start:stop] = reduce(store.block(name, start, stop))
    return out


class Median(StoredUpdatesAggregator):
    """Coordinate-wise median of the n updates (unweighted; mean of the two middle values
    when n is even). Holds all n updates. Resists up to ceil(n/2) - 1 arbitrary updates."""

    def _combine(self, store: UpdateStore) -> dict[str, np.ndarray]:
        return _coordinatewise(store, lambda block: np.median(block, axis=0))


class TrimmedMean(StoredUpdatesAggregator):
    """Coordinate-wise trimmed mean: per value, drop the k largest and k smallest of the n
    updates and average the rest (unweighted). Holds all n updates.

    `trim` is k itself (an integer) or a fraction of n per side in [0, 0.5), k =
    floor(trim * n) as in `scipy.stats.trim_mean`. Resists k arbitrary updates; a round
    needs n > 2k replies.
    """

    SETTINGS: ClassVar[tuple[str, ...]] = ("trim", "memory_budget_mb")

    def __init__(
        self, *, trim: int | float = 0.1, memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB
    ) -> None:
        super().__init__(memory_budget_mb=memory_budget_mb)
        if isinstance(trim, int) and not isinstance(trim, bool):
            int_setting("TrimmedMean", "trim", trim, 0, "values dropped per side")
        elif not isinstance(trim, float) or not 0 <= trim < 0.5:
            raise ConfigurationError(
                f"TrimmedMean trim must be a count of values dropped per side (an integer "
                f">= 0) or a fraction per side in [0, 0.5), got {trim!r}"
            )
        self.trim = trim

    def trimmed_per_side(self, n: int) -> int:
        """k for a round of n replies."""
        return self.trim if isinstance(self.trim, int) else int(self.trim * n)

    def _combine(self, store: UpdateStore) -> dict[str, np.ndarray]:
        n = len(store)
        k = self.trimmed_per_side(n)
        if n <= 2 * k:
            raise RoundFailedError(
                f"TrimmedMean with trim={self.trim} drops {k} value(s) per side, which needs "
                f"more than 2 x {k} = {2 * k} node replies, got {n}: lower trim or have more "
                "nodes answer (strategy min_nodes)"
            )
        return _coordinatewise(store, lambda block: np.sort(block, axis=0)[k : n - k].mean(axis=0))
