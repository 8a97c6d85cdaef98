"""The base of aggregators that need every node's update at once (robust aggregators).

They keep the round's replies in an `UpdateStore` (memory up to `memory_budget_mb`,
disk beyond) and combine them in `finish`. None of them can work from a secure sum:
SecAgg on parameters reveals only the sum, and these need each update.
"""

from __future__ import annotations

import abc
import logging
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from common.errors import ConfigurationError, RoundFailedError
from researcher.aggregators.base import Aggregator
from researcher.aggregators.checks import check_reply
from researcher.aggregators.update_store import UpdateStore

__all__ = [
    "DEFAULT_MEMORY_BUDGET_MB",
    "StoredUpdatesAggregator",
    "int_setting",
    "number_setting",
    "weighted_average",
]

log = logging.getLogger(__name__)

#: Default memory for the round's updates, in MiB: 512 MiB holds e.g. 10 updates of a
#: 13M-parameter float32 model; beyond it rows go to disk.
DEFAULT_MEMORY_BUDGET_MB = 512.0


def int_setting(owner: str, key: str, value: Any, minimum: int, meaning: str) -> int:
    """`value` as an integer >= minimum, or a ConfigurationError naming `owner` and `key`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(
            f"{owner} {key} must be an integer >= {minimum} ({meaning}), got {value!r}"
        )
    return value


def number_setting(
    owner: str, key: str, value: Any, minimum: float, meaning: str, *, above: bool = False
) -> float:
    """`value` as a finite number >= minimum (> minimum with `above`), or a
    ConfigurationError naming `owner` and `key`."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < minimum
        or (above and value == minimum)
    ):
        bound = f"> {minimum}" if above else f">= {minimum}"
        raise ConfigurationError(
            f"{owner} {key} must be a number {bound} ({meaning}), got {value!r}"
        )
    return float(value)


def weighted_average(
    store: UpdateStore, coefficients: np.ndarray, rows: Sequence[int] | None = None
) -> dict[str, np.ndarray]:
    """sum_i c_i x_i / sum_i c_i over the given rows (default all), float64, slice by slice."""
    picked = list(range(len(store))) if rows is None else list(rows)
    coeffs = np.asarray(coefficients, dtype=np.float64)[picked]
    coeffs = coeffs / coeffs.sum()
    out = {name: np.empty(shape, np.float64) for name, shape in store.shapes.items()}
    for name, start, stop in store.slices(len(picked)):
        out[name].reshape(-1)[start:stop] = coeffs @ store.block(name, start, stop, picked)
    return out


class StoredUpdatesAggregator(Aggregator):
    """Keeps every reply of the round (validated whole) and combines them in `finish`.

    Subclasses implement `_combine(store)` and list their constructor settings in
    `SETTINGS`, which checkpoints save and `set_state` restores through the constructor's
    checks.
    """

    supports_secure_sum: ClassVar[bool] = False

    #: Constructor keywords saved by `get_state`.
    SETTINGS: ClassVar[tuple[str, ...]] = ("memory_budget_mb",)

    def __init__(self, *, memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB) -> None:
        self.memory_budget_mb = number_setting(
            type(self).__name__,
            "memory_budget_mb",
            memory_budget_mb,
            0,
            "MiB of node updates kept in memory before the rest go to disk",
        )
        self._scratch: Path | None = None
        self._store: UpdateStore | None = None
        self._shapes: dict[str, tuple[int, ...]] = {}

    def use_scratch_folder(self, folder: Path) -> None:
        self._scratch = Path(folder)

    def start(self, template: Mapping[str, np.ndarray]) -> None:
        if self._store is not None:
            self._store.close()  # a failed round's updates
        self._store = UpdateStore(
            template,
            budget_bytes=int(min(self.memory_budget_mb * (1 << 20), sys.maxsize)),
            spill_parent=self._scratch,
        )
        self._shapes = {k: tuple(np.shape(v)) for k, v in template.items()}

    def add(self, node_id: str, params: Mapping[str, np.ndarray], weight: float) -> None:
        store = self._started()
        check_reply(node_id, params, weight, self._shapes)
        store.add(node_id, params, weight)

    def finish(self) -> dict[str, np.ndarray]:
        store = self._started()
        try:
            if not len(store):
                raise RoundFailedError("no node reply to aggregate")
            if store.on_disk:
                log.info(
                    "%s: %d of %d node updates were kept on disk in %s (memory_budget_mb = %g)",
                    type(self).__name__,
                    store.on_disk,
                    len(store),
                    store.spill_folder(),
                    self.memory_budget_mb,
                )
            result = self._combine(store)
            dtypes = store.dtypes
            return {
                name: value if value.dtype == dtypes[name] else value.astype(dtypes[name])
                for name, value in result.items()
            }
        finally:
            store.close()
            self._store = None

    @abc.abstractmethod
    def _combine(self, store: UpdateStore) -> Mapping[str, np.ndarray]:
        """The aggregate of the stored updates (float64, or already in the model's dtypes)."""

    def _started(self) -> UpdateStore:
        if self._store is None:
            raise RoundFailedError(f"{type(self).__name__}: start() a round before adding to it")
        return self._store

    def get_state(self) -> dict[str, Any]:
        return {**super().get_state(), **{key: getattr(self, key) for key in self.SETTINGS}}

    def set_state(self, state: Mapping[str, Any]) -> None:
        settings = {key: state[key] for key in self.SETTINGS if key in state}
        configured = type(self)(**settings)  # the constructor's checks, as for a new one
        for key in self.SETTINGS:
            setattr(self, key, getattr(configured, key))
