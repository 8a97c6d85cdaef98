"""DataManager: what a training plan's `training_data()` returns, turned into batches on the node."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from common.errors import DatasetError

__all__ = ["DataManager"]


def _as_array(values: Any, what: str) -> np.ndarray:
    if hasattr(values, "to_numpy"):
        values = values.to_numpy()
    array = np.asarray(values)
    if array.dtype.kind == "O":
        raise DatasetError(
            f"the {what} holds non-numeric values (dtype object): convert or drop those columns "
            "in training_data()"
        )
    return array


@dataclass
class DataManager:
    """Features and target held by the node, with how to batch them.

    `dataset` and `target` are arrays (or pandas objects) of the same length; `shuffle`
    reorders samples each epoch with the seed given by the training arguments.
    """

    dataset: Any
    target: Any = None
    shuffle: bool = False

    def __post_init__(self) -> None:
        self.inputs = _as_array(self.dataset, "dataset")
        self.targets = None if self.target is None else _as_array(self.target, "target")
        if self.targets is not None and len(self.targets) != len(self.inputs):
            raise DatasetError(
                f"dataset has {len(self.inputs)} samples but target has {len(self.targets)}"
            )
        if len(self.inputs) == 0:
            raise DatasetError("training_data() returned an empty dataset")

    def __len__(self) -> int:
        return len(self.inputs)

    def split(self, test_ratio: float, seed: int) -> tuple[DataManager, DataManager | None]:
        """Split into training and testing parts (the testing part is None when test_ratio is 0)."""
        if not 0.0 <= test_ratio < 1.0:
            raise DatasetError(f"test_ratio must be in [0, 1), got {test_ratio}")
        n_test = round(len(self) * test_ratio)
        if n_test == 0:
            return self, None
        order = np.random.default_rng(seed).permutation(len(self))
        test, train = order[:n_test], order[n_test:]
        return self._subset(train), self._subset(test)

    def _subset(self, index: np.ndarray) -> DataManager:
        target = None if self.targets is None else self.targets[index]
        return DataManager(self.inputs[index], target, self.shuffle)

    def batches(
        self, batch_size: int, rng: np.random.Generator
    ) -> Iterator[tuple[np.ndarray, Any]]:
        """One epoch of (inputs, target) batches; the last batch may be smaller."""
        n = len(self)
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        for start in range(0, n, batch_size):
            index = order[start : start + batch_size]
            yield self.inputs[index], (None if self.targets is None else self.targets[index])
