"""Reading a CSV or NPZ dataset and writing one file per node for a partition of its samples.

CSV: one header line, one sample per row; the target is a column. NPZ: named arrays sharing
their first dimension (samples); the target is one of them. Node files keep the source's
format, columns (or arrays) and row order, so a node registers them as it would the source.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

from common.data_split import NodeCounts, SplitSpec, class_counts, split_indices
from common.errors import DatasetError

__all__ = [
    "SPLITTABLE_TYPES",
    "SplitResult",
    "SplittableDataset",
    "load_splittable",
    "node_file_name",
    "split_file",
]

#: File types `load_splittable` reads, by extension.
SPLITTABLE_TYPES = {".csv": "csv", ".npz": "npz"}


@dataclass
class SplittableDataset:
    """A dataset in memory, ready to be cut into node files with `write_parts`."""

    path: Path
    data_type: str
    n_samples: int
    columns: tuple[str, ...]
    target: str | None
    frame: pd.DataFrame | None = None
    arrays: dict[str, npt.NDArray[np.generic]] | None = None

    def labels(self) -> npt.NDArray[np.generic] | None:
        """The target column or array (one class per sample), or None without a target."""
        if self.target is None:
            return None
        if self.frame is not None:
            column = self.frame[self.target]
            try:
                # Numeric labels sort as numbers (2 before 10) in the per-class counts.
                return np.asarray(pd.to_numeric(column).to_numpy())
            except ValueError:
                return np.asarray(column.to_numpy())
        assert self.arrays is not None
        labels = self.arrays[self.target]
        if labels.ndim != 1:
            raise DatasetError(
                f"target array {self.target!r} of {self.path} has shape {labels.shape}: "
                "splitting by class needs one label per sample (a 1-D array)"
            )
        return labels

    def write_parts(self, parts: Sequence[npt.NDArray[np.int64]], out: Path) -> list[Path]:
        """Write node `i`'s samples to `out / node_file_name(i)`; refuses to overwrite."""
        paths = [out / node_file_name(i, self.data_type) for i in range(len(parts))]
        existing = [p for p in paths if p.exists()]
        if existing:
            raise DatasetError(
                f"{existing[0]} already exists: remove the old node files or pass another --out"
            )
        out.mkdir(parents=True, exist_ok=True)
        for path, part in zip(paths, parts, strict=True):
            if self.frame is not None:
                self.frame.iloc[part].to_csv(path, index=False)
            else:
                assert self.arrays is not None
                np.savez(path, **{name: a[part] for name, a in self.arrays.items()})  # type: ignore[arg-type]
        return paths


@dataclass(frozen=True)
class SplitResult:
    """What `split_file` wrote: node files and per-node counts (`classes` empty without target)."""

    source: Path
    spec: SplitSpec
    seed: int
    target: str | None
    classes: tuple[str, ...]
    nodes: tuple[NodeCounts, ...]
    paths: tuple[Path, ...]


def split_file(
    path: Path,
    n_nodes: int,
    spec: SplitSpec,
    out: Path,
    *,
    seed: int = 0,
    target: str | None = None,
) -> SplitResult:
    """Split the CSV or NPZ file at `path` into `n_nodes` files under `out`."""
    dataset = load_splittable(path, target)
    labels = dataset.labels()
    kind = "column" if dataset.data_type == "csv" else "array"
    if labels is not None and _is_continuous(labels):
        if spec.needs_labels:
            raise DatasetError(
                f"the target {kind} {target!r} of {path} holds non-integer numbers (a regression "
                f"target?): split {spec} needs classes; use --split iid, or a class {kind}"
            )
        labels = None  # IID by continuous values: nothing to stratify on, no counts to show
    if labels is None and spec.needs_labels:
        raise DatasetError(
            f"split {spec} distributes classes: name the {kind} holding them with --target "
            f"(the {kind}s of {path} are: {', '.join(dataset.columns)})"
        )
    parts = split_indices(n_nodes, spec, labels=labels, n_samples=dataset.n_samples, seed=seed)
    paths = dataset.write_parts(parts, out)
    if labels is None:
        classes: list[str] = []
        rows = [NodeCounts(i, len(p), ()) for i, p in enumerate(parts)]
    else:
        classes, rows = class_counts(labels, parts)
    return SplitResult(path, spec, seed, target, tuple(classes), tuple(rows), tuple(paths))


def _is_continuous(labels: npt.NDArray[np.generic]) -> bool:
    """True for floating-point labels that are not all whole numbers."""
    if labels.dtype.kind != "f":
        return False
    values = labels.astype(np.float64)
    return bool(np.any(np.isfinite(values) & (values != np.round(values))))


def node_file_name(index: int, data_type: str) -> str:
    """`node-1.csv`, `node-2.npz`...: 1-based, as nodes are named in the demo and compose."""
    return f"node-{index + 1}.{data_type}"


def load_splittable(path: Path, target: str | None = None) -> SplittableDataset:
    """Load a CSV or NPZ file; `target` must name one of its columns or arrays when given."""
    data_type = SPLITTABLE_TYPES.get(path.suffix.lower())
    if data_type is None:
        raise DatasetError(
            f"cannot split {path}: only CSV (.csv) and NPZ (.npz) files are supported"
        )
    if not path.is_file():
        raise DatasetError(f"dataset {path} does not exist or is not a file")
    if data_type == "csv":
        dataset = _load_csv(path)
    else:
        dataset = _load_npz(path)
    if target is not None and target not in dataset.columns:
        kind = "column" if data_type == "csv" else "array"
        raise DatasetError(
            f"{path} has no {kind} {target!r}; its {kind}s are: {', '.join(dataset.columns)}"
        )
    dataset.target = target
    return dataset


def _load_csv(path: Path) -> SplittableDataset:
    try:
        # Strings stay strings: labels such as "007" or "yes" must not be reinterpreted.
        frame = pd.read_csv(path, keep_default_na=False, dtype=str)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read {path} as CSV with a header line: {exc}") from exc
    columns = tuple(str(c) for c in frame.columns)
    return SplittableDataset(path, "csv", len(frame), columns, None, frame=frame)


def _load_npz(path: Path) -> SplittableDataset:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, ValueError) as exc:
        raise DatasetError(
            f"cannot read {path} as NPZ (numpy.savez, no pickled objects): {exc}"
        ) from exc
    if not arrays:
        raise DatasetError(f"{path} holds no array")
    sizes = {name: (a.shape[0] if a.ndim else None) for name, a in arrays.items()}
    if len(set(sizes.values())) != 1 or None in sizes.values():
        listing = ", ".join(f"{name}: {n}" for name, n in sizes.items())
        raise DatasetError(
            f"the arrays of {path} must share their first dimension (samples) to be split; "
            f"first dimensions are {listing}"
        )
    n_samples = next(iter(sizes.values()))
    assert n_samples is not None
    return SplittableDataset(path, "npz", n_samples, tuple(arrays), None, arrays=arrays)
