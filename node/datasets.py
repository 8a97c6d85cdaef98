"""Inspecting a dataset when an operator registers it, and checking later that it has not changed.

The types (``csv``, ``npy``, ``npz``, ``images``, ``medical-folder``) live behind one
registry, ``common.datasets.DATASET_TYPES``; each documents its layout and refusals. This
module is the node's entry: it checks the path, works out the type (from ``--type``, the
file extension, or ``images`` for a folder), hands over to the type, and re-hashes a
registered dataset for ``verify``.

Nothing is loaded into memory at once: arrays are read through their headers, CSV rows
are streamed, images through their headers, scans one at a time. The content hash is
SHA-256: of the bytes for a file (what ``sha256sum FILE`` prints), and for a folder of the
sorted lines ``<sha256>  <relative path>`` of its files, so a folder's changed files can
be named.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from common.datasets import DATASET_TYPES, DatasetInspection, DatasetType, hash_file, hash_tree
from common.datasets.base import listing
from common.errors import DatasetError

__all__ = [
    "DATA_TYPES",
    "DatasetInspection",
    "VerifyResult",
    "detect_type",
    "hash_file",
    "hash_tree",
    "inspect_dataset",
    "is_folder_type",
    "verify",
]

logger = logging.getLogger(__name__)

#: Dataset types a node can register, as accepted by ``--type``.
DATA_TYPES = tuple(DATASET_TYPES)

#: The type of a folder registered without ``--type``.
DEFAULT_FOLDER_TYPE = "images"


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of ``verify``: ``ok`` when the content hash still matches the registered one."""

    name: str
    ok: bool
    expected_sha256: str
    actual_sha256: str | None
    problems: tuple[str, ...] = ()


class RegisteredDataset(Protocol):
    """The fields of a registered dataset that ``verify`` needs (a ``DatasetRecord``; its
    ``options``, when it has them, are the type's settings)."""

    @property
    def name(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def data_type(self) -> str: ...
    @property
    def sha256(self) -> str: ...


def _type(name: str) -> DatasetType:
    return DATASET_TYPES.build(name)


def is_folder_type(data_type: str) -> bool:
    """True when ``data_type`` is a folder type, whose files are hashed one by one."""
    return data_type in DATASET_TYPES and DATASET_TYPES[data_type].is_folder


def _folder_types() -> str:
    return "|".join(name for name in DATA_TYPES if is_folder_type(name))


# ------------------------------------------------------------ type detection


def detect_type(path: Path, declared: str | None = None) -> str:
    """The dataset type of ``path``: from its extension (or being a folder), checked against ``declared``."""
    if declared is not None and declared not in DATA_TYPES:
        raise DatasetError(
            f"unknown dataset type {declared!r}: use one of {', '.join(DATA_TYPES)}", field="type"
        )
    if path.is_dir():
        if declared is None:
            return DEFAULT_FOLDER_TYPE
        if not is_folder_type(declared):
            raise DatasetError(
                f"{path} is a folder but --type {declared} expects a file: pass the file's "
                f"path, or --type {_folder_types()} for a folder "
                f"({DATASET_TYPES[DEFAULT_FOLDER_TYPE].description}, or "
                f"{DATASET_TYPES['medical-folder'].description})",
                field="type",
            )
        return declared
    if declared is not None and is_folder_type(declared):
        raise DatasetError(
            f"{path} is a file but --type {declared} expects a folder: "
            f"{DATASET_TYPES[declared].description}",
            field="type",
        )
    extension_types = {ext: name for name in DATA_TYPES for ext in DATASET_TYPES[name].extensions}
    from_extension = extension_types.get(path.suffix.lower())
    if declared is None:
        if from_extension is None:
            raise DatasetError(
                f"cannot tell the type of {path} from its extension {path.suffix or '(none)'!r}: "
                f"pass --type {'|'.join(DATA_TYPES)}",
                field="type",
            )
        return from_extension
    if from_extension is not None and from_extension != declared:
        raise DatasetError(
            f"{path} has the extension of a {from_extension} file but --type {declared} was "
            f"given: drop --type, or pass --type {from_extension}",
            field="type",
        )
    return declared


def _check_path(path: Path) -> Path:
    absolute = path.expanduser().resolve()
    if not absolute.exists():
        raise DatasetError(
            f"dataset path {absolute} does not exist: check the path (it is read on this "
            f"node; a relative path is taken from {Path.cwd()})"
        )
    if not (absolute.is_file() or absolute.is_dir()):
        raise DatasetError(f"dataset path {absolute} is neither a regular file nor a folder")
    if not os.access(absolute, os.R_OK | (os.X_OK if absolute.is_dir() else 0)):
        raise DatasetError(
            f"dataset path {absolute} is not readable by this user: fix its permissions"
        )
    return absolute


def _check_options(kind: str, options: Mapping[str, str] | None) -> dict[str, str]:
    given = {key: value for key, value in (options or {}).items() if value}
    accepted = DATASET_TYPES[kind].option_names
    unknown = sorted(key for key in given if key not in accepted)
    if unknown:
        flags = ", ".join(f"--{key.replace('_', '-')}" for key in unknown)
        raise DatasetError(
            f"{flags} do(es) not apply to a {kind} dataset"
            + (f": it takes {', '.join(accepted)}" if accepted else ": drop it"),
            field=unknown[0],
        )
    return given


# ---------------------------------------------------------------- inspection


def inspect_dataset(
    path: Path | str,
    data_type: str | None = None,
    target: str | None = None,
    options: Mapping[str, str] | None = None,
) -> DatasetInspection:
    """Check a dataset and measure it: type, shape, columns, sample count, content hash.

    Raises ``DatasetError`` naming the path (and the available columns or arrays when
    ``target`` is not among them). ``path`` is made absolute. ``options`` are the type's
    registration settings (e.g. ``demographics`` for ``medical-folder``).
    """
    absolute = _check_path(Path(path))
    kind = detect_type(absolute, data_type)
    settings = _check_options(kind, options)
    if target is not None and not target.strip():
        raise DatasetError(
            "the target is empty: pass --target with a column name, or omit it", field="target"
        )
    logger.info("inspecting %s dataset %s", kind, absolute)
    return _type(kind).inspect(absolute, target, settings)


# ------------------------------------------------------------- verification


def verify(record: RegisteredDataset, manifest: Mapping[str, str] | None = None) -> VerifyResult:
    """Re-hash a registered dataset and report whether (and for a folder, which files) changed.

    ``manifest`` maps a folder's relative paths to their registered SHA-256 (the
    registry keeps it); without it a changed folder is reported as a whole.
    """
    path = Path(record.path)
    expected = record.sha256

    def failed(actual: str | None, *problems: str) -> VerifyResult:
        return VerifyResult(record.name, False, expected, actual, tuple(problems))

    if not path.exists():
        return failed(None, f"{path} no longer exists")
    if record.data_type not in DATASET_TYPES:
        return failed(
            None, f"{path} has type {record.data_type!r}, which this node no longer knows"
        )
    kind = _type(record.data_type)
    if kind.is_folder:
        if not path.is_dir():
            return failed(None, f"{path} is no longer a folder")
        try:
            # A DatasetRecord has options (type settings); a bare record means none.
            actual, found = kind.content_hash(path, getattr(record, "options", {}))
        except DatasetError as exc:
            return failed(None, str(exc))
        files = found or {}
        if actual == expected:
            return VerifyResult(record.name, True, expected, actual)
        if manifest is None:
            return failed(actual, f"the content of {path} changed since it was registered")
        problems = [f"the content of {path} changed since it was registered"]
        changed = sorted(rel for rel in files if rel in manifest and files[rel] != manifest[rel])
        added = sorted(rel for rel in files if rel not in manifest)
        removed = sorted(rel for rel in manifest if rel not in files)
        for what, rels in (("changed", changed), ("added", added), ("removed", removed)):
            if rels:
                problems.append(f"files {what}: {listing(rels)}")
        return failed(actual, *problems)
    if not path.is_file():
        return failed(None, f"{path} is no longer a file")
    actual = hash_file(path)
    if actual == expected:
        return VerifyResult(record.name, True, expected, actual)
    return failed(
        actual,
        f"{path} changed since it was registered (sha256 {expected[:12]}... is now {actual[:12]}...)",
    )
