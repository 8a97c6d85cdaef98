"""Geometric median of the updates: RFA (Pillutla, Kakade and Harchaoui, 2022).

The point minimising sum_i a_i |z - x_i| (a_i: the nodes' sample counts, normalised),
found by the smoothed Weiszfeld algorithm: z <- sum_i b_i x_i / sum_i b_i with
b_i = a_i / max(eps, |z - x_i|), from the weighted mean, until the objective improves by
less than `tol` (relative) or after `max_iter` steps.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from researcher.aggregators.stored import (
    DEFAULT_MEMORY_BUDGET_MB,
    StoredUpdatesAggregator,
    int_setting,
    number_setting,
    weighted_average,
)
from researcher.aggregators.update_store import UpdateStore

__all__ = ["GeometricMedian", "distances_to"]

log = logging.getLogger(__name__)


def distances_to(store: UpdateStore, point: Mapping[str, np.ndarray]) -> np.ndarray:
    """Euclidean distance of each stored update (reading order) to `point`."""
    squared = np.zeros(len(store), dtype=np.float64)
    for name, start, stop in store.slices():
        block = store.block(name, start, stop)
        block -= point[name].reshape(-1)[start:stop]
        squared += np.einsum("ij,ij->i", block, block)
    return np.sqrt(squared)


class GeometricMedian(StoredUpdatesAggregator):
    """Geometric median by smoothed Weiszfeld (RFA), weighted by the nodes' sample counts.

    `eps` (> 0) smooths the distances (no division by zero when the estimate reaches an
    update), `max_iter` caps the Weiszfeld steps, `tol` is the relative objective
    improvement below which it stops. Holds all n updates at once, plus the estimate (one
    float64 copy of the model); each step reads every update twice. Resists fewer than
    half the total weight being arbitrary.
    """

    SETTINGS: ClassVar[tuple[str, ...]] = ("eps", "max_iter", "tol", "memory_budget_mb")

    def __init__(
        self,
        *,
        eps: float = 1e-6,
        max_iter: int = 100,
        tol: float = 1e-6,
        memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
    ) -> None:
        super().__init__(memory_budget_mb=memory_budget_mb)
        self.eps = number_setting(
            "GeometricMedian", "eps", eps, 0, "distance smoothing", above=True
        )
        self.max_iter = int_setting("GeometricMedian", "max_iter", max_iter, 1, "Weiszfeld steps")
        self.tol = number_setting("GeometricMedian", "tol", tol, 0, "relative improvement")
        #: Weiszfeld steps the last round took.
        self.iterations = 0

    def _combine(self, store: UpdateStore) -> dict[str, np.ndarray]:
        alphas = store.weights / store.weights.sum()
        estimate = weighted_average(store, alphas)
        distances = distances_to(store, estimate)
        objective = float(alphas @ distances)
        for step in range(1, self.max_iter + 1):
            estimate = weighted_average(store, alphas / np.maximum(self.eps, distances))
            distances = distances_to(store, estimate)
            previous, objective = objective, float(alphas @ distances)
            self.iterations = step
            if abs(previous - objective) <= self.tol * objective:
                break
        log.info(
            "geometric median: %d Weiszfeld step(s), mean distance to the updates %.6g",
            self.iterations,
            objective,
        )
        return estimate
