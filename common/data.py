"""DataManager: what a training plan's `training_data()` returns, turned into batches on the node.

Two forms: arrays (features and target of the same length, sliced per batch), or a
sample dataset (an object with ``len()`` and ``dataset[i]``, e.g. ``MedicalFolderDataset``
or a ``torch.utils.data.Dataset``) read one sample at a time and collated per batch, so
only a batch of samples is in memory at once.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from common.errors import DatasetError

__all__ = ["DataManager", "collate"]


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


def _is_sample_dataset(values: Any) -> bool:
    """True for an indexable dataset of samples, False for array-likes sliced as a whole."""
    array_like = (
        isinstance(values, (list, tuple, np.ndarray, Mapping))
        or hasattr(values, "__array__")
        or hasattr(values, "to_numpy")
    )
    return not array_like and hasattr(values, "__getitem__") and hasattr(values, "__len__")


def collate(items: Sequence[Any]) -> Any:
    """Stack samples into a batch, keeping their structure: dicts and tuples element-wise,
    tensors with ``torch.stack``, arrays and numbers into an array, None stays None, other
    values (text) into a list."""
    first = items[0]
    if first is None:
        return None
    if isinstance(first, Mapping):
        return {key: collate([item[key] for item in items]) for key in first}
    if isinstance(first, tuple):
        return tuple(collate(parts) for parts in zip(*items, strict=True))
    if type(first).__module__.startswith("torch"):
        import torch

        return torch.stack(list(items))
    if isinstance(first, (np.ndarray, np.generic, int, float, bool)):
        return np.stack([np.asarray(item) for item in items])
    return list(items)


class _Subset:
    """Samples ``index`` of a sample dataset."""

    def __init__(self, dataset: Any, index: np.ndarray) -> None:
        self.dataset, self.index = dataset, index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> Any:
        return self.dataset[int(self.index[i])]


@dataclass
class DataManager:
    """Features and target held by the node, with how to batch them.

    `dataset` and `target` are arrays (or pandas objects) of the same length; or `dataset`
    is a sample dataset whose items are ``(inputs, target)`` (or inputs alone) and `target`
    is None. `shuffle` reorders samples each epoch with the seed given by the training
    arguments.
    """

    dataset: Any
    target: Any = None
    shuffle: bool = False

    def __post_init__(self) -> None:
        self.samples: Any = None
        if _is_sample_dataset(self.dataset):
            if self.target is not None:
                raise DatasetError(
                    "a sample dataset yields (inputs, target) pairs: drop target= from the "
                    "DataManager, or have the dataset return the target"
                )
            self.samples = self.dataset
            self._length = len(self.samples)
            self._inputs: Any = None
            self._targets: Any = None
        else:
            self._inputs = _as_array(self.dataset, "dataset")
            self._targets = None if self.target is None else _as_array(self.target, "target")
            self._length = len(self._inputs)
            if self._targets is not None and len(self._targets) != self._length:
                raise DatasetError(
                    f"dataset has {self._length} samples but target has {len(self._targets)}"
                )
        if self._length == 0:
            raise DatasetError("training_data() returned an empty dataset")

    @property
    def inputs(self) -> Any:
        """All inputs at once (a sample dataset is read whole: meant for a test split)."""
        if self._inputs is None:
            self._inputs, self._targets = self._collated(np.arange(self._length))
        return self._inputs

    @property
    def targets(self) -> Any:
        """All targets at once (None without a target)."""
        if self.samples is not None and self._inputs is None:
            self._inputs, self._targets = self._collated(np.arange(self._length))
        return self._targets

    def __len__(self) -> int:
        return self._length

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
        if self.samples is not None:
            return DataManager(_Subset(self.samples, index), None, self.shuffle)
        target = None if self._targets is None else self._targets[index]
        return DataManager(self._inputs[index], target, self.shuffle)

    def _collated(self, index: np.ndarray) -> tuple[Any, Any]:
        items = [self.samples[int(i)] for i in index]
        if all(isinstance(item, tuple) and len(item) == 2 for item in items):
            return collate([item[0] for item in items]), collate([item[1] for item in items])
        return collate(items), None

    def batches(self, batch_size: int, rng: np.random.Generator) -> Iterator[tuple[Any, Any]]:
        """One epoch of (inputs, target) batches; the last batch may be smaller."""
        n = len(self)
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        for start in range(0, n, batch_size):
            yield self.batch(order[start : start + batch_size])

    def batch(self, index: np.ndarray) -> tuple[Any, Any]:
        """The (inputs, target) of the samples at `index`, in that order."""
        if self.samples is not None:
            return self._collated(index)
        return self._inputs[index], (None if self._targets is None else self._targets[index])
