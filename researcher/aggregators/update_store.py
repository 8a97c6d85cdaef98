"""UpdateStore: every node's parameters of one round, in memory up to a budget, on disk beyond.

Robust aggregators (median, trimmed mean, Krum, geometric median) need all n updates at
once, unlike a mean that folds them as they come. The store copies each accepted reply
into one flat row per node: rows go to memory while they fit in the budget, and beyond
it to `np.memmap` files in a temporary folder (under the experiment folder when one is
given), removed by `close()`. Readers take `block`s: one parameter slice across all
nodes, as float64, so that working memory beyond the store is O(n x slice), not
O(n x model).
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.errors import RoundFailedError

__all__ = ["UpdateStore"]

#: Byte alignment of each parameter inside a row, so that every view is aligned for its
#: dtype (and on a cache line).
_ALIGN = 64

#: Size of one gathered block (n nodes x slice, float64). 8 MiB keeps the working set of
#: a median or a distance pass at a few times that, whatever the model size.
_BLOCK_BYTES = 8 << 20

#: Shortest slice: below about a thousand elements numpy's per-call overhead dominates.
_MIN_SLICE = 1024


@dataclass(frozen=True)
class _Slot:
    """Where one parameter lives inside a node's row."""

    offset: int
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


def _remove_folder(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


class UpdateStore:
    """The n node updates of a round; rows in memory up to `budget_bytes`, on disk beyond.

    `spill_parent` is the folder the temporary spill folder is made in (the experiment
    folder); None uses the system's temporary folder. Rows are read in node-id order, so
    results do not depend on the order in which replies arrived.
    """

    def __init__(
        self,
        template: Mapping[str, np.ndarray],
        *,
        budget_bytes: int,
        spill_parent: Path | None = None,
    ) -> None:
        self._slots: dict[str, _Slot] = {}
        offset = 0
        for name, value in template.items():
            array = np.asarray(value)
            self._slots[name] = _Slot(offset, tuple(array.shape), array.dtype)
            offset += -(-array.nbytes // _ALIGN) * _ALIGN
        self.row_bytes = offset
        self._budget = budget_bytes
        self._spill_parent = spill_parent
        self._spill_dir: Path | None = None
        self._cleanup: weakref.finalize[[Path], UpdateStore] | None = None
        self._rows: list[np.ndarray] = []
        self._ids: list[str] = []
        self._weights: list[float] = []
        self._memory_bytes = 0
        self._on_disk = 0
        self._order: list[int] | None = None

    # -- filling ------------------------------------------------------------------------
    def add(self, node_id: str, params: Mapping[str, np.ndarray], weight: float) -> None:
        """Copy one node's (validated) parameters in; a node may answer once per round."""
        if node_id in self._ids:
            raise RoundFailedError(f"node {node_id} answered twice in the same round")
        row = self._new_row()
        for name, slot in self._slots.items():
            self._view(row, slot)[...] = np.asarray(params[name]).reshape(-1)
        self._rows.append(row)
        self._ids.append(node_id)
        self._weights.append(float(weight))
        self._order = None

    def _new_row(self) -> np.ndarray:
        if self._memory_bytes + self.row_bytes <= self._budget or self.row_bytes == 0:
            self._memory_bytes += self.row_bytes
            return np.empty(self.row_bytes, dtype=np.uint8)
        path = self.spill_folder() / f"update-{len(self._rows):06d}.bin"
        self._on_disk += 1
        return np.memmap(path, dtype=np.uint8, mode="w+", shape=(self.row_bytes,))

    def spill_folder(self) -> Path:
        """The temporary folder of the rows on disk (made on first use, removed by close)."""
        if self._spill_dir is None:
            if self._spill_parent is not None:
                self._spill_parent.mkdir(parents=True, exist_ok=True)
            self._spill_dir = Path(
                tempfile.mkdtemp(prefix="aggregator-spill-", dir=self._spill_parent)
            )
            # Also removed if the round fails and the store is dropped without close().
            self._cleanup = weakref.finalize(self, _remove_folder, self._spill_dir)
        return self._spill_dir

    def close(self) -> None:
        """Drop every row and remove the spill folder."""
        self._rows.clear()
        self._ids.clear()
        self._weights.clear()
        self._order = None
        self._memory_bytes = self._on_disk = 0
        if self._cleanup is not None:
            self._cleanup()
        self._spill_dir = self._cleanup = None

    # -- reading ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._rows)

    @property
    def on_disk(self) -> int:
        """How many rows were spilled to disk."""
        return self._on_disk

    @property
    def node_ids(self) -> list[str]:
        """Node ids in reading order (sorted)."""
        return [self._ids[i] for i in self._sorted()]

    @property
    def weights(self) -> np.ndarray:
        """The nodes' weights (sample counts) in reading order."""
        return np.array([self._weights[i] for i in self._sorted()], dtype=np.float64)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: slot.shape for name, slot in self._slots.items()}

    @property
    def dtypes(self) -> dict[str, np.dtype]:
        return {name: slot.dtype for name, slot in self._slots.items()}

    def empty_model(self) -> dict[str, np.ndarray]:
        """Uninitialised arrays with the model's names, shapes and dtypes."""
        return {name: np.empty(slot.shape, slot.dtype) for name, slot in self._slots.items()}

    def slice_length(self, rows: int | None = None) -> int:
        """Elements per slice so that a block of `rows` (default all) stays near 8 MiB."""
        count = max(1, len(self) if rows is None else rows)
        return max(_MIN_SLICE, _BLOCK_BYTES // (8 * count))

    def slices(self, rows: int | None = None) -> Iterator[tuple[str, int, int]]:
        """(name, start, stop) over every parameter's flat elements, slice by slice."""
        length = self.slice_length(rows)
        for name, slot in self._slots.items():
            for start in range(0, slot.size, length):
                yield name, start, min(start + length, slot.size)

    def block(
        self, name: str, start: int, stop: int, rows: Sequence[int] | None = None
    ) -> np.ndarray:
        """Elements [start, stop) of parameter `name` for each row (indices in reading
        order, default all), as a float64 array of shape (rows, stop - start)."""
        order = self._sorted()
        picked = range(len(order)) if rows is None else rows
        slot = self._slots[name]
        out = np.empty((len(picked), stop - start), dtype=np.float64)
        for i, index in enumerate(picked):
            out[i] = self._view(self._rows[order[index]], slot)[start:stop]
        return out

    def _sorted(self) -> list[int]:
        if self._order is None:
            self._order = sorted(range(len(self._ids)), key=self._ids.__getitem__)
        return self._order

    @staticmethod
    def _view(row: np.ndarray, slot: _Slot) -> np.ndarray:
        raw = row[slot.offset : slot.offset + slot.size * slot.dtype.itemsize]
        return raw.view(slot.dtype)
