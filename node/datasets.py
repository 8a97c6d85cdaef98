"""Inspecting a dataset when an operator registers it, and checking later that it has not changed.

Supported types:

- ``csv``: UTF-8, comma-separated, one header line (what ``pandas.read_csv`` reads by
  default). Shape is ``(rows, columns)``; the target, when given, must be a column.
- ``npy``: one numeric array; shape is the array's, samples along the first axis.
- ``npz``: named numeric arrays (``numpy.savez``); columns are the array names, the
  target, when given, is one of them, and shape/samples are those of the first other array.
- ``images``: a folder with one sub-folder per class (the layout of torchvision's
  ``ImageFolder``) holding PNG or JPEG files, nested folders allowed. Columns are the class
  names; shape is ``(n, height, width, channels)`` when all images share a size (channels
  as stored: a palette PNG counts 3), else ``(n,)``. Files and folders whose name starts
  with ``.`` are ignored (``.DS_Store``...); any other file must be an image in a class folder.

Nothing is loaded into memory: arrays are read through their headers, CSV rows are
streamed, images through their headers. The content hash is SHA-256: of the bytes for a
file (what ``sha256sum FILE`` prints), and for a folder of the sorted lines
``<sha256>  <relative path>`` of its files, so a folder's changed files can be named.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import logging
import math
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

import numpy as np

from common.errors import DatasetError

__all__ = [
    "DATA_TYPES",
    "DatasetInspection",
    "VerifyResult",
    "detect_type",
    "hash_file",
    "hash_tree",
    "inspect_dataset",
    "verify",
]

logger = logging.getLogger(__name__)

#: Dataset types a node can register, as accepted by ``--type``.
DATA_TYPES = ("csv", "npy", "npz", "images")

#: File extensions that give a dataset's type without ``--type``.
EXTENSION_TYPES = {".csv": "csv", ".npy": "npy", ".npz": "npz"}

#: Image files accepted in a class folder.
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg"})

#: Read size while hashing: 1 MiB amortises the Python call per read (throughput within a
#: few percent of ``sha256sum``) while keeping memory flat whatever the dataset size.
HASH_CHUNK_BYTES = 1 << 20

#: Columns, arrays or files listed in an error message before "... and N more": enough to
#: spot a typo, short enough to stay on one terminal screen.
MAX_LISTED = 20

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}  # colour type -> channels as stored
# JPEG start-of-frame markers (C0-CF) minus DHT (C4), JPG (C8) and DAC (CC), which share the range.
_JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD9)})
_ZIP_SIGNATURE = b"PK\x03\x04"


@dataclass(frozen=True)
class DatasetInspection:
    """What ``inspect_dataset`` learnt about a dataset; ``files`` maps a folder's files to hashes."""

    path: Path
    data_type: str
    n_samples: int
    shape: tuple[int, ...]
    columns: tuple[str, ...]
    target: str | None
    sha256: str
    files: Mapping[str, str] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of ``verify``: ``ok`` when the content hash still matches the registered one."""

    name: str
    ok: bool
    expected_sha256: str
    actual_sha256: str | None
    problems: tuple[str, ...] = ()


class RegisteredDataset(Protocol):
    """The fields of a registered dataset that ``verify`` needs (a ``DatasetRecord``)."""

    @property
    def name(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def data_type(self) -> str: ...
    @property
    def sha256(self) -> str: ...


def _listing(items: list[str] | tuple[str, ...]) -> str:
    shown = ", ".join(items[:MAX_LISTED])
    if len(items) > MAX_LISTED:
        shown += f", ... and {len(items) - MAX_LISTED} more"
    return shown


# ------------------------------------------------------------------ hashing


def hash_file(path: Path) -> str:
    """SHA-256 of a file's bytes, streamed (the digest ``sha256sum`` prints)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(HASH_CHUNK_BYTES):
                digest.update(chunk)
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return digest.hexdigest()


def _tree_files(root: Path) -> list[str]:
    """Relative POSIX paths of the non-hidden regular files under ``root``, sorted."""
    found: list[str] = []

    def on_error(exc: OSError) -> None:
        raise DatasetError(f"cannot list {exc.filename}: {exc.strerror or exc}") from exc

    for dirpath, dirnames, filenames in os.walk(root, onerror=on_error):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = Path(dirpath).relative_to(root)
        for name in filenames:
            if not name.startswith(".") and os.path.isfile(os.path.join(dirpath, name)):
                found.append((rel_dir / name).as_posix())
    return sorted(found)


def hash_tree(root: Path) -> tuple[str, dict[str, str]]:
    """SHA-256 of a folder and of each of its files.

    The folder digest is the SHA-256 of the lines ``<sha256>  <relative path>\\n`` of
    its non-hidden files sorted by path, so renaming, adding, removing or editing any
    file changes it.
    """
    files = {rel: hash_file(root / rel) for rel in _tree_files(root)}
    return _tree_digest(files), files


def _tree_digest(files: Mapping[str, str]) -> str:
    digest = hashlib.sha256()
    for rel in sorted(files):
        digest.update(f"{files[rel]}  {rel}\n".encode())
    return digest.hexdigest()


# ------------------------------------------------------------ type detection


def detect_type(path: Path, declared: str | None = None) -> str:
    """The dataset type of ``path``: from its extension (or being a folder), checked against ``declared``."""
    if declared is not None and declared not in DATA_TYPES:
        raise DatasetError(
            f"unknown dataset type {declared!r}: use one of {', '.join(DATA_TYPES)}", field="type"
        )
    if path.is_dir():
        if declared not in (None, "images"):
            raise DatasetError(
                f"{path} is a folder but --type {declared} expects a file: pass the file's "
                "path, or --type images for a folder of class sub-folders",
                field="type",
            )
        return "images"
    if declared == "images":
        raise DatasetError(
            f"{path} is a file but --type images expects a folder with one sub-folder per class",
            field="type",
        )
    from_extension = EXTENSION_TYPES.get(path.suffix.lower())
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


# ---------------------------------------------------------------- inspection


def inspect_dataset(
    path: Path | str, data_type: str | None = None, target: str | None = None
) -> DatasetInspection:
    """Check a dataset and measure it: type, shape, columns, sample count, content hash.

    Raises ``DatasetError`` naming the path (and the available columns or arrays when
    ``target`` is not among them). ``path`` is made absolute.
    """
    absolute = _check_path(Path(path))
    kind = detect_type(absolute, data_type)
    if target is not None and not target.strip():
        raise DatasetError(
            "the target is empty: pass --target with a column name, or omit it", field="target"
        )
    logger.info("inspecting %s dataset %s", kind, absolute)
    if kind == "images":
        return _inspect_images(absolute, target)
    if kind == "csv":
        n_samples, shape, columns = _inspect_csv(absolute, target)
    elif kind == "npy":
        n_samples, shape, columns = _inspect_npy(absolute, target)
    else:
        n_samples, shape, columns = _inspect_npz(absolute, target)
    return DatasetInspection(
        path=absolute,
        data_type=kind,
        n_samples=n_samples,
        shape=shape,
        columns=columns,
        target=target,
        sha256=hash_file(absolute),
    )


def _missing_target(path: Path, target: str, available: tuple[str, ...], what: str) -> DatasetError:
    same_but_case = [name for name in available if name.lower() == target.lower()]
    close = same_but_case or difflib.get_close_matches(target, available, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return DatasetError(
        f"target {what} {target!r} not found in {path}{hint}; its {what}s are: "
        f"{_listing(list(available))}",
        field="target",
    )


def _inspect_csv(path: Path, target: str | None) -> tuple[int, tuple[int, ...], tuple[str, ...]]:
    header: list[str] | None = None
    n_rows = 0
    try:
        # utf-8-sig drops the byte-order mark spreadsheet programs write.
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            for row in reader:
                if not row:  # blank line: pandas skips it too
                    continue
                if header is None:
                    header = row
                    continue
                if len(row) != len(header):
                    raise DatasetError(
                        f"{path} line {reader.line_num} has {len(row)} fields but the header has "
                        f"{len(header)}: fix the row or the header"
                    )
                n_rows += 1
    except UnicodeDecodeError as exc:
        raise DatasetError(
            f"{path} is not UTF-8 text (byte {exc.start}): save it as UTF-8 CSV, or pass "
            "--type npy/npz for a binary file"
        ) from exc
    except csv.Error as exc:
        raise DatasetError(f"{path} is not a valid CSV file: {exc}") from exc
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if header is None:
        raise DatasetError(f"{path} is empty: a CSV dataset needs a header line and rows")
    columns = tuple(header)
    duplicates = sorted({name for name in columns if columns.count(name) > 1})
    if duplicates:
        raise DatasetError(
            f"{path} has duplicate column names ({_listing(duplicates)}): rename them"
        )
    if len(columns) == 1 and any(sep in columns[0] for sep in ";\t|"):
        logger.warning(
            "%s has a single column %r: is it separated by something else than commas?",
            path,
            columns[0],
        )
    if n_rows == 0:
        raise DatasetError(f"{path} has a header but no rows: there is nothing to train on")
    if target is not None and target not in columns:
        raise _missing_target(path, target, columns, "column")
    return n_rows, (n_rows, len(columns)), columns


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
        raise _missing_target(path, target, names, "array")
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


# -------------------------------------------------------------------- images


def _png_size(head: bytes, path: Path) -> tuple[int, int, int]:
    if len(head) < 26 or head[12:16] != b"IHDR":
        raise DatasetError(f"{path} is a damaged PNG file (no IHDR header)")
    width = int.from_bytes(head[16:20], "big")
    height = int.from_bytes(head[20:24], "big")
    channels = _PNG_CHANNELS.get(head[25])
    if channels is None:
        raise DatasetError(f"{path} is a damaged PNG file (colour type {head[25]})")
    return height, width, channels


def _jpeg_size(fh: IO[bytes], path: Path) -> tuple[int, int, int]:
    """Walk the JPEG segments up to the start-of-frame, which carries the size."""
    damaged = DatasetError(f"{path} is a damaged JPEG file (no frame header)")
    fh.seek(2)
    while True:
        byte = fh.read(1)
        if byte != b"\xff":
            raise damaged
        while byte == b"\xff":  # fill bytes may precede a marker
            byte = fh.read(1)
        if not byte:
            raise damaged
        marker = byte[0]
        if marker in _JPEG_STANDALONE_MARKERS:
            continue
        if marker in (0xD9, 0xDA):  # end of image, or scan data before any frame header
            raise damaged
        length_bytes = fh.read(2)
        if len(length_bytes) < 2:
            raise damaged
        length = int.from_bytes(length_bytes, "big")
        if marker in _JPEG_SOF_MARKERS:
            frame = fh.read(6)
            if len(frame) < 6:
                raise damaged
            height = int.from_bytes(frame[1:3], "big")
            width = int.from_bytes(frame[3:5], "big")
            return height, width, frame[5]
        fh.seek(length - 2, os.SEEK_CUR)


def _image_size(path: Path) -> tuple[int, int, int]:
    """``(height, width, channels)`` of a PNG or JPEG file, read from its header."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(32)
            if head.startswith(_PNG_SIGNATURE):
                return _png_size(head, path)
            if head.startswith(b"\xff\xd8"):
                return _jpeg_size(fh, path)
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from exc
    raise DatasetError(
        f"{path} has an image extension but is neither PNG nor JPEG: convert or remove it"
    )


def _inspect_images(root: Path, target: str | None) -> DatasetInspection:
    if target is not None:
        raise DatasetError(
            f"{root} is an image folder, whose labels are its class sub-folders: drop --target",
            field="target",
        )
    relpaths = _tree_files(root)
    top_level = [rel for rel in relpaths if "/" not in rel]
    if top_level:
        raise DatasetError(
            f"{root} has files outside class sub-folders ({_listing(top_level)}): an image "
            "folder holds one sub-folder per class, each holding that class's images"
        )
    not_images = [rel for rel in relpaths if Path(rel).suffix.lower() not in IMAGE_EXTENSIONS]
    if not_images:
        raise DatasetError(
            f"{root} holds files that are not PNG or JPEG images ({_listing(not_images)}): "
            "move them out of the dataset folder"
        )
    classes = sorted(
        entry.name for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith(".")
    )
    per_class = {name: 0 for name in classes}
    for rel in relpaths:
        per_class[rel.split("/", 1)[0]] += 1
    empty = [name for name, count in per_class.items() if count == 0]
    if not classes:
        raise DatasetError(
            f"{root} has no class sub-folders: put each class's images in a sub-folder named "
            "after the class"
        )
    if empty:
        raise DatasetError(
            f"class folder(s) {_listing(empty)} of {root} hold no images: add images or remove them"
        )
    sizes = {_image_size(root / rel) for rel in relpaths}
    n_samples = len(relpaths)
    if len(sizes) == 1:
        shape: tuple[int, ...] = (n_samples, *next(iter(sizes)))
    else:
        shape = (n_samples,)
        logger.info("%s: images have %d different sizes; recording shape (n,)", root, len(sizes))
    files = {rel: hash_file(root / rel) for rel in relpaths}
    return DatasetInspection(
        path=root,
        data_type="images",
        n_samples=n_samples,
        shape=shape,
        columns=tuple(classes),
        target=None,
        sha256=_tree_digest(files),
        files=files,
    )


# ------------------------------------------------------------- verification


def _diff_listing(kind: str, rels: list[str]) -> str:
    return f"{kind}: {_listing(rels)}"


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
    if record.data_type == "images":
        if not path.is_dir():
            return failed(None, f"{path} is no longer a folder")
        actual, files = hash_tree(path)
        if actual == expected:
            return VerifyResult(record.name, True, expected, actual)
        if manifest is None:
            return failed(actual, f"the content of {path} changed since it was registered")
        problems = [f"the content of {path} changed since it was registered"]
        changed = sorted(rel for rel in files if rel in manifest and files[rel] != manifest[rel])
        added = sorted(rel for rel in files if rel not in manifest)
        removed = sorted(rel for rel in manifest if rel not in files)
        for kind, rels in (("changed", changed), ("added", added), ("removed", removed)):
            if rels:
                problems.append(_diff_listing(f"files {kind}", rels))
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
