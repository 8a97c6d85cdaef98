"""``npy`` and ``npz`` datasets: numeric numpy arrays, read through their headers.

``npy``: one array, samples along the first axis. ``npz`` (``numpy.savez``): named arrays;
columns are the names, the target one of them, shape/samples those of the first other
array. Arrays holding Python objects are refused (they only load through pickle).
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from common.datasets.base import DATASET_TYPES, FileDatasetType, missing_target
from common.errors import DatasetError

__all__ = ["NpyType", "NpzType"]


@DATASET_TYPES.register("npy")
class NpyType(FileDatasetType):
    """One numeric array; plans get it memory-mapped."""

    extensions = (".npy",)
    description = "a .npy array"

    def measure(
        self, path: Path, target: str | None
    ) -> tuple[int, tuple[int, ...], tuple[str, ...]]:
        return _inspect_npy(path, target)

    def load(
        self, path: Path, target: str | None, options: Mapping[str, str], **kwargs: Any
    ) -> Any:
        return np.load(path, mmap_mode=kwargs.get("mmap_mode", "r"), allow_pickle=False)


@DATASET_TYPES.register("npz")
class NpzType(FileDatasetType):
    """Named numeric arrays; plans get a dict name -> array."""

    extensions = (".npz",)
    description = "an .npz archive of arrays"

    def measure(
        self, path: Path, target: str | None
    ) -> tuple[int, tuple[int, ...], tuple[str, ...]]:
        return _inspect_npz(path, target)

    def load(
        self, path: Path, target: str | None, options: Mapping[str, str], **kwargs: Any
    ) -> Any:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}


def _read_npy_header(fh: IO[bytes], where: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """Shape, dtype and expected data size of the array whose ``.npy`` stream ``fh`` is at."""
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        else:  # 2.0 and 3.0 share the layout; 3.0 only allows UTF-8 field names
            shape, _fortran, dtype = np.lib.format.read_array_header_2_0(fh)
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{where} is not a valid .npy array: {exc}") from exc
    if dtype.hasobject:
        raise DatasetError(
            f"{where} holds Python objects, which only load through pickle (never used by "
            "fedloom): save a numeric array instead"
        )
    return tuple(int(n) for n in shape), dtype, math.prod(shape) * dtype.itemsize


def _samples_of(shape: tuple[int, ...], where: str) -> int:
    if not shape:
        raise DatasetError(f"{where} is a scalar: samples must lie along a first axis")
    if shape[0] == 0:
        raise DatasetError(f"{where} holds no samples (first axis of length 0)")
    return shape[0]


def _inspect_npy(path: Path, target: str | None) -> tuple[int, tuple[int, ...], tuple[str, ...]]:
    if target is not None:
        raise DatasetError(
            f"{path} is a single .npy array, which has no target to name: drop --target, or "
            "save features and target together with numpy.savez and register the .npz",
            field="target",
        )
    try:
        with open(path, "rb") as fh:
            shape, _dtype, nbytes = _read_npy_header(fh, str(path))
            data_offset = fh.tell()
        size = path.stat().st_size
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if size < data_offset + nbytes:
        raise DatasetError(
            f"{path} is truncated: its header announces {nbytes} data bytes but only "
            f"{max(size - data_offset, 0)} follow; copy the file again"
        )
    return _samples_of(shape, str(path)), shape, ()


def _inspect_npz(path: Path, target: str | None) -> tuple[int, tuple[int, ...], tuple[str, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.is_dir() or Path(info.filename).name.startswith("."):
                    continue
                if not info.filename.endswith(".npy"):
                    raise DatasetError(
                        f"{path} holds {info.filename!r}, which is not a .npy array: an .npz "
                        "dataset must be written by numpy.savez or numpy.savez_compressed"
                    )
                where = f"array {info.filename[:-4]!r} of {path}"
                with archive.open(info) as member:
                    shape, _dtype, nbytes = _read_npy_header(member, where)
                    header_bytes = member.tell()
                if info.file_size < header_bytes + nbytes:
                    raise DatasetError(f"{where} is truncated: copy the file again")
                shapes[info.filename[:-4]] = shape
    except zipfile.BadZipFile as exc:
        raise DatasetError(
            f"{path} is not a valid .npz archive ({exc}): write it with numpy.savez"
        ) from exc
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from exc
    names = tuple(shapes)
    if not names:
        raise DatasetError(f"{path} holds no arrays")
    if target is not None and target not in shapes:
        raise missing_target(path, target, names, "array")
    features = [name for name in names if name != target]
    if not features:
        raise DatasetError(
            f"{path} holds only the target array {target!r}: add the feature array(s)"
        )
    shape = shapes[features[0]]
    n_samples = _samples_of(shape, f"array {features[0]!r} of {path}")
    if target is not None:
        target_shape = shapes[target]
        if not target_shape or target_shape[0] != n_samples:
            raise DatasetError(
                f"target array {target!r} of {path} has shape {target_shape} but "
                f"{features[0]!r} has {n_samples} samples: they must have the same first axis"
            )
    return n_samples, shape, names
