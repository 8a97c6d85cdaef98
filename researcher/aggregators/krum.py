"""Krum and Multi-Krum (Blanchard et al., NeurIPS 2017): keep the updates closest to their peers.

Each update's score is the sum of its squared distances to its n - f - 2 nearest other
updates; Krum returns the update with the lowest score, Multi-Krum the plain mean of the
m lowest. Both are unweighted and hold all n updates of the round; distances are summed
slice by slice, so memory beyond the store is O(n x slice + n^2).
"""

from __future__ import annotations

import logging
from typing import ClassVar

import numpy as np

from common.errors import RoundFailedError
from researcher.aggregators.stored import (
    DEFAULT_MEMORY_BUDGET_MB,
    StoredUpdatesAggregator,
    int_setting,
    weighted_average,
)
from researcher.aggregators.update_store import UpdateStore

__all__ = ["Krum", "MultiKrum", "krum_scores", "pairwise_squared_distances"]

log = logging.getLogger(__name__)


def pairwise_squared_distances(store: UpdateStore) -> np.ndarray:
    """(n, n) squared Euclidean distances between the stored updates (reading order)."""
    n = len(store)
    gram = np.zeros((n, n), dtype=np.float64)
    for name, start, stop in store.slices():
        block = store.block(name, start, stop)
        # Centred first: distances between nearby large parameters would otherwise be lost
        # to cancellation in |a|^2 + |b|^2 - 2 a.b.
        block -= block.mean(axis=0)
        gram += block @ block.T
    norms = np.diag(gram)
    return np.maximum(norms[:, None] + norms[None, :] - 2 * gram, 0.0)


def krum_scores(distances: np.ndarray, f: int) -> np.ndarray:
    """Each update's sum of squared distances to its n - f - 2 nearest other updates."""
    n = len(distances)
    others = distances + np.diag(np.full(n, np.inf))  # an update is not its own neighbour
    scores: np.ndarray = np.sort(others, axis=1)[:, : n - f - 2].sum(axis=1)
    return scores


class MultiKrum(StoredUpdatesAggregator):
    """Multi-Krum: the plain (unweighted) mean of the m updates with the lowest Krum scores.

    `f` is the number of byzantine nodes to resist; a round needs n > 2f + 2 replies.
    `m` defaults to n - f and must not exceed it. Holds all n updates at once. After each
    round `selected` lists the node ids whose updates were averaged.
    """

    SETTINGS: ClassVar[tuple[str, ...]] = ("f", "m", "memory_budget_mb")

    def __init__(
        self,
        *,
        f: int = 1,
        m: int | None = None,
        memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
    ) -> None:
        super().__init__(memory_budget_mb=memory_budget_mb)
        owner = type(self).__name__
        self.f = int_setting(owner, "f", f, 0, "the number of byzantine nodes to resist")
        self.m = None if m is None else int_setting(owner, "m", m, 1, "updates averaged")
        self.selected: list[str] = []

    def _combine(self, store: UpdateStore) -> dict[str, np.ndarray]:
        n, f, owner = len(store), self.f, type(self).__name__
        if n <= 2 * f + 2:
            raise RoundFailedError(
                f"{owner} with f={f} needs more than 2f + 2 = {2 * f + 2} node replies, got "
                f"{n}: lower f or have at least {2 * f + 3} nodes answer (strategy min_nodes)"
            )
        m = n - f if self.m is None else self.m
        if m > n - f:
            raise RoundFailedError(
                f"{owner} m={m} would average more than the n - f = {n - f} updates it can "
                f"trust among {n} replies with f={f}: lower m or have more nodes answer"
            )
        scores = krum_scores(pairwise_squared_distances(store), f)
        chosen = sorted(np.argsort(scores, kind="stable")[:m].tolist())
        ids = store.node_ids
        self.selected = [ids[i] for i in chosen]
        log.info(
            "%s kept %s, left out %s",
            owner,
            ", ".join(self.selected),
            ", ".join(sorted(set(ids) - set(self.selected))) or "nobody",
        )
        return weighted_average(store, np.ones(n), chosen)


class Krum(MultiKrum):
    """Krum: the single update with the lowest Krum score (unweighted).

    `f` is the number of byzantine nodes to resist; a round needs n > 2f + 2 replies.
    Holds all n updates at once. After each round `selected` names the chosen node.
    """

    SETTINGS: ClassVar[tuple[str, ...]] = ("f", "memory_budget_mb")

    def __init__(self, *, f: int = 1, memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB) -> None:
        super().__init__(f=f, m=1, memory_budget_mb=memory_budget_mb)
