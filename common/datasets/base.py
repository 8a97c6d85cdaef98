"""The dataset-type seam: what every type a node can register provides, and the registry.

A type inspects a dataset at registration (samples, shape, columns, refusals naming the
fault), hashes its content (``verify`` compares that hash later) and loads it for a plan
(``BaseTrainingPlan.load_dataset``). Register one with ``@DATASET_TYPES.register(name)``.
"""

from __future__ import annotations

import abc
import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from common.datasets.hashing import hash_file, hash_tree
from common.errors import DatasetError
from common.registry import Registry

__all__ = [
    "DATASET_TYPES",
    "DatasetInspection",
    "DatasetType",
    "FileDatasetType",
    "listing",
    "missing_target",
]

#: Columns, arrays or files listed in an error message before "... and N more": enough to
#: spot a typo, short enough to stay on one terminal screen.
MAX_LISTED = 20


@dataclass(frozen=True)
class DatasetInspection:
    """What an inspection learnt about a dataset; ``files`` maps a folder's files to hashes."""

    path: Path
    data_type: str
    n_samples: int
    shape: tuple[int, ...]
    columns: tuple[str, ...]
    target: str | None
    sha256: str
    files: Mapping[str, str] | None = field(default=None, repr=False)
    options: Mapping[str, str] = field(default_factory=dict)


class DatasetType(abc.ABC):
    """One kind of dataset. Subclasses set the class attributes and define ``inspect`` and ``load``."""

    name: ClassVar[str]
    #: True for a folder dataset (hashed file by file), False for a single file.
    is_folder: ClassVar[bool] = False
    #: File extensions that give this type without ``--type`` (lower case, with the dot).
    extensions: ClassVar[tuple[str, ...]] = ()
    #: Registration settings the type accepts (``--demographics`` -> ``demographics``).
    option_names: ClassVar[tuple[str, ...]] = ()
    #: What the type is, for messages ("a folder of class sub-folders").
    description: ClassVar[str] = ""

    @abc.abstractmethod
    def inspect(
        self, path: Path, target: str | None, options: Mapping[str, str]
    ) -> DatasetInspection:
        """Check the dataset at ``path`` (absolute) and measure it; ``DatasetError`` naming the fault."""

    @abc.abstractmethod
    def load(
        self, path: Path, target: str | None, options: Mapping[str, str], **kwargs: Any
    ) -> Any:
        """The dataset as a plan uses it (``BaseTrainingPlan.load_dataset``)."""

    def content_hash(
        self, path: Path, options: Mapping[str, str]
    ) -> tuple[str, dict[str, str] | None]:
        """SHA-256 of the dataset's content, and of each file for a folder."""
        if self.is_folder:
            return hash_tree(path)
        return hash_file(path), None

    def get_state(self) -> Mapping[str, Any]:
        return {"name": self.name}

    def set_state(self, state: Mapping[str, Any]) -> None:  # noqa: B027 - optional hook
        """Types hold no state."""


class FileDatasetType(DatasetType):
    """A type held in one file: ``measure`` gives samples, shape and columns; the hash is the file's."""

    @abc.abstractmethod
    def measure(
        self, path: Path, target: str | None
    ) -> tuple[int, tuple[int, ...], tuple[str, ...]]:
        """``(n_samples, shape, columns)`` of the file, or ``DatasetError`` naming the fault."""

    def inspect(
        self, path: Path, target: str | None, options: Mapping[str, str]
    ) -> DatasetInspection:
        n_samples, shape, columns = self.measure(path, target)
        return DatasetInspection(
            path, self.name, n_samples, shape, columns, target, hash_file(path)
        )


#: name -> class of every dataset type a node can register (``--type``).
DATASET_TYPES: Registry[DatasetType] = Registry("dataset type")


def listing(items: list[str] | tuple[str, ...]) -> str:
    """``items`` joined by commas, cut after ``MAX_LISTED``."""
    shown = ", ".join(items[:MAX_LISTED])
    if len(items) > MAX_LISTED:
        shown += f", ... and {len(items) - MAX_LISTED} more"
    return shown


def missing_target(path: Path, target: str, available: tuple[str, ...], what: str) -> DatasetError:
    """The error for a target not among ``available`` (with a did-you-mean)."""
    same_but_case = [name for name in available if name.lower() == target.lower()]
    close = same_but_case or difflib.get_close_matches(target, available, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return DatasetError(
        f"target {what} {target!r} not found in {path}{hint}; its {what}s are: "
        f"{listing(list(available))}",
        field="target",
    )
