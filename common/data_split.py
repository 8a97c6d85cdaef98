"""Partitioning one dataset's samples among N nodes: IID, label skew or Dirichlet over classes.

Works on sample indices and labels only, so the same partition serves `fedloom data split`
(files on disk) and an in-memory simulation. Every split is a pure function of the labels,
the number of nodes and the seed: the same inputs give the same partition on any machine.

- ``iid``: stratified round-robin; every node gets each class's samples within one of the
  others, and node sizes differ by at most one.
- ``label-skew:K``: each node holds K classes (consecutive in a seeded shuffle of the
  classes, wrapping around so every class is held when ``nodes * K >= classes``); each class's
  samples are shared evenly among the nodes holding it.
- ``dirichlet:ALPHA``: for each class, node proportions are drawn from a symmetric
  Dirichlet(ALPHA); small ALPHA concentrates each class on few nodes, large ALPHA tends to IID.
  Draws that leave a node without samples are redrawn (up to ``DIRICHLET_MAX_DRAWS``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from common.errors import ConfigurationError

__all__ = [
    "DIRICHLET_MAX_DRAWS",
    "SPLIT_KINDS",
    "NodeCounts",
    "SplitSpec",
    "class_counts",
    "heterogeneity",
    "parse_split",
    "split_indices",
]

#: Split names accepted by `parse_split`, with their parameter.
SPLIT_KINDS = ("iid", "label-skew:K", "dirichlet:ALPHA")

#: Dirichlet draws tried before giving up on giving every node a sample. With alpha = 0.05,
#: 10 nodes and 2 classes a draw succeeds about once in 40; 1000 draws keep the failure rate of
#: feasible cases negligible while an impossible request still fails in well under a second.
DIRICHLET_MAX_DRAWS = 1000

SplitKind = Literal["iid", "label-skew", "dirichlet"]
IndexArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class SplitSpec:
    """A parsed split: its kind, and classes per node (label skew) or alpha (Dirichlet)."""

    kind: SplitKind
    classes_per_node: int | None = None
    alpha: float | None = None

    @property
    def needs_labels(self) -> bool:
        """Label skew and Dirichlet need a class per sample; IID is stratified when it has one."""
        return self.kind != "iid"

    def __str__(self) -> str:
        if self.kind == "label-skew":
            return f"label-skew:{self.classes_per_node}"
        if self.kind == "dirichlet":
            return f"dirichlet:{self.alpha:g}"
        return "iid"


@dataclass(frozen=True)
class NodeCounts:
    """Samples per class on one node, classes in the order of `class_counts`' `classes`."""

    node: int
    n_samples: int
    per_class: tuple[int, ...]


def parse_split(text: str) -> SplitSpec:
    """`iid`, `label-skew:K` (K >= 1 classes per node) or `dirichlet:ALPHA` (ALPHA > 0)."""
    name, _, param = text.strip().partition(":")
    usage = f"choose one of {', '.join(SPLIT_KINDS)} (e.g. label-skew:2, dirichlet:0.5)"
    if name == "iid":
        if param:
            raise ConfigurationError(f"split 'iid' takes no parameter, got {text!r}; use 'iid'")
        return SplitSpec("iid")
    if name == "label-skew":
        try:
            k = int(param or "1")
        except ValueError:
            raise ConfigurationError(
                f"split {text!r}: K must be a whole number of classes per node, e.g. label-skew:2"
            ) from None
        if k < 1:
            raise ConfigurationError(f"split {text!r}: each node needs at least 1 class (K >= 1)")
        return SplitSpec("label-skew", classes_per_node=k)
    if name == "dirichlet":
        if not param:
            raise ConfigurationError(
                f"split {text!r} needs alpha: dirichlet:ALPHA, e.g. dirichlet:0.5"
            )
        try:
            alpha = float(param)
        except ValueError:
            raise ConfigurationError(f"split {text!r}: alpha must be a number, e.g. 0.5") from None
        if not (alpha > 0 and math.isfinite(alpha)):
            raise ConfigurationError(
                f"split {text!r}: alpha must be a finite number > 0 "
                "(small values such as 0.1 give strong skew, large ones such as 100 nearly IID)"
            )
        return SplitSpec("dirichlet", alpha=alpha)
    raise ConfigurationError(f"unknown split {text!r}: {usage}")


def split_indices(
    n_nodes: int,
    spec: SplitSpec,
    *,
    labels: npt.ArrayLike | None = None,
    n_samples: int | None = None,
    seed: int = 0,
) -> list[IndexArray]:
    """Sample indices of each node, sorted; together they cover every sample exactly once.

    Give `labels` (one class per sample, any hashable dtype) or, for an unstratified IID split,
    only `n_samples`. Raises `ConfigurationError` naming the fix when the split is impossible.
    """
    if labels is not None:
        label_array = np.asarray(labels)
        if label_array.ndim != 1:
            raise ConfigurationError(
                f"labels must be one class per sample (1-D), got shape {label_array.shape}"
            )
        n_samples = len(label_array)
    elif spec.needs_labels:
        raise ConfigurationError(
            f"split {spec} distributes classes: give the labels (the target column or array)"
        )
    if n_samples is None:
        raise ConfigurationError("give labels or n_samples to split")
    if n_nodes < 1:
        raise ConfigurationError(f"the number of nodes must be at least 1, got {n_nodes}")
    if n_nodes > n_samples:
        raise ConfigurationError(
            f"{n_nodes} nodes but only {n_samples} samples: every node needs at least one; "
            "use fewer nodes or more data"
        )
    rng = np.random.default_rng(seed)
    if labels is None:
        parts = np.array_split(rng.permutation(n_samples), n_nodes)
        return [np.sort(p).astype(np.int64) for p in parts]
    by_class = _indices_by_class(label_array, rng)
    if spec.kind == "iid":
        parts_list = _iid(by_class, n_nodes)
    elif spec.kind == "label-skew":
        assert spec.classes_per_node is not None
        parts_list = _label_skew(by_class, n_nodes, spec.classes_per_node, rng)
    else:
        assert spec.alpha is not None
        parts_list = _dirichlet(by_class, n_nodes, spec.alpha, rng)
    return [np.sort(p).astype(np.int64) for p in parts_list]


def class_counts(
    labels: npt.ArrayLike, parts: Sequence[IndexArray]
) -> tuple[list[str], list[NodeCounts]]:
    """The sorted class names and, per node, its sample count for each class."""
    label_array = np.asarray(labels)
    classes, codes = np.unique(label_array, return_inverse=True)
    rows = []
    for node, part in enumerate(parts):
        counts = np.bincount(codes[part], minlength=len(classes))
        rows.append(NodeCounts(node, len(part), tuple(int(c) for c in counts)))
    return [str(c) for c in classes], rows


def heterogeneity(rows: Sequence[NodeCounts]) -> float:
    """Mean total-variation distance between each node's class mix and the pooled one.

    0 for identical mixes (IID); approaches 1 - 1/classes when every node holds one class.
    """
    counts = np.array([r.per_class for r in rows], dtype=float)
    pooled = counts.sum(axis=0) / counts.sum()
    mixes = counts / counts.sum(axis=1, keepdims=True)
    return float(np.mean(0.5 * np.abs(mixes - pooled).sum(axis=1)))


def _indices_by_class(
    labels: npt.NDArray[np.generic], rng: np.random.Generator
) -> list[IndexArray]:
    """Each class's sample indices in a seeded random order, classes in sorted order."""
    _, codes = np.unique(labels, return_inverse=True)
    order = np.argsort(codes, kind="stable")
    bounds = np.cumsum(np.bincount(codes))[:-1]
    return [rng.permutation(group) for group in np.split(order, bounds)]


def _iid(by_class: list[IndexArray], n_nodes: int) -> list[IndexArray]:
    # Dealing the class-grouped indices round-robin keeps every class and every node size
    # within one sample of even.
    dealt = np.concatenate(by_class)
    return [dealt[node::n_nodes] for node in range(n_nodes)]


def _label_skew(
    by_class: list[IndexArray], n_nodes: int, k: int, rng: np.random.Generator
) -> list[IndexArray]:
    n_classes = len(by_class)
    if k > n_classes:
        raise ConfigurationError(
            f"label-skew:{k} asks for {k} classes per node but the data has only {n_classes}; "
            f"use label-skew:K with K <= {n_classes}"
        )
    if n_nodes * k < n_classes:
        raise ConfigurationError(
            f"{n_nodes} nodes x {k} classes cover {n_nodes * k} of the {n_classes} classes: the "
            f"others would be dropped; use label-skew:{math.ceil(n_classes / n_nodes)} or more "
            "nodes"
        )
    class_order = rng.permutation(n_classes)
    holders: list[list[int]] = [[] for _ in range(n_classes)]
    for node in range(n_nodes):
        for j in range(k):
            holders[int(class_order[(node * k + j) % n_classes])].append(node)
    parts: list[list[IndexArray]] = [[] for _ in range(n_nodes)]
    for cls, nodes in enumerate(holders):
        if len(by_class[cls]) < len(nodes):
            raise ConfigurationError(
                f"class #{cls} has {len(by_class[cls])} sample(s) to share among {len(nodes)} "
                "nodes: some would get none of it; use a smaller K, fewer nodes, or more data"
            )
        for node, share in zip(nodes, np.array_split(by_class[cls], len(nodes)), strict=True):
            parts[node].append(share)
    return [np.concatenate(p) for p in parts]


def _dirichlet(
    by_class: list[IndexArray], n_nodes: int, alpha: float, rng: np.random.Generator
) -> list[IndexArray]:
    for _ in range(DIRICHLET_MAX_DRAWS):
        parts: list[list[IndexArray]] = [[] for _ in range(n_nodes)]
        for indices in by_class:
            shares = rng.dirichlet(np.full(n_nodes, alpha))
            cuts = np.round(np.cumsum(shares)[:-1] * len(indices)).astype(int)
            for node, piece in enumerate(np.split(indices, cuts)):
                parts[node].append(piece)
        merged = [np.concatenate(p) for p in parts]
        if all(len(m) > 0 for m in merged):
            return merged
    raise ConfigurationError(
        f"dirichlet:{alpha:g} left some node without samples in {DIRICHLET_MAX_DRAWS} draws "
        f"({n_nodes} nodes, {sum(len(c) for c in by_class)} samples): use a larger alpha, "
        "fewer nodes, more data, or another --seed"
    )
