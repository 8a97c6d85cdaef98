"""Pooling nodes' sufficient statistics into the moments of the whole cohort.

Clear answers are merged pairwise with the exact, numerically stable update of Chan,
Golub and LeVeque (1979) for means, sums of squared deviations and co-moments: the result
equals the statistics of the concatenated data up to floating-point rounding. SecAgg
answers arrive as one unmasked sum over the nodes; sums of the rescaled values ``u`` give
the moments (``m2 = sum u^2 - (sum u)^2 / n``), then the declared range maps them back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from common.analytics import AnalyticsQuery, check_shapes, histogram_name
from common.errors import PayloadError

__all__ = ["PooledMoments", "pool_clear", "pool_secure"]


@dataclass
class PooledMoments:
    """The cohort's moments per column (arrays over the query's columns)."""

    n: np.ndarray
    missing: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    minimum: np.ndarray | None  # None under SecAgg: extremes are never revealed
    maximum: np.ndarray | None
    clipped: np.ndarray | None  # values clipped into the declared range (SecAgg only)
    histograms: dict[int, np.ndarray]  # column index -> [below, bins..., above]
    corr_n: float | None = None
    comoment: np.ndarray | None = None


def _validated(
    node: str, arrays: Mapping[str, np.ndarray], query: AnalyticsQuery, *, secure: bool
) -> dict[str, np.ndarray]:
    problems = check_shapes(arrays, query, secure=secure)
    values = {name: np.asarray(array, dtype=np.float64) for name, array in arrays.items()}
    bad = [name for name, array in values.items() if name not in ("min", "max")]
    problems += [
        f"array {name!r} is not finite" for name in bad if not np.isfinite(values[name]).all()
    ]
    if problems:
        raise PayloadError(f"node {node} answered the statistics malformed: {'; '.join(problems)}")
    return values


def _merge(
    total: dict[str, np.ndarray], part: dict[str, np.ndarray], keys: tuple[str, str, str]
) -> None:
    """Fold one node's (count, mean, m2) block into ``total`` in place (Chan et al.)."""
    n_key, mean_key, m2_key = keys
    n_a, n_b = total[n_key], part[n_key]
    n = n_a + n_b
    delta = part[mean_key] - total[mean_key]
    weight = np.divide(n_b, n, out=np.zeros_like(n, dtype=np.float64), where=n > 0)
    total[mean_key] = total[mean_key] + delta * weight
    if total[m2_key].ndim == 2:  # co-moment matrix: the outer product of the mean shift
        scale = float(n_a[0] * n_b[0] / n[0]) if n[0] > 0 else 0.0
        total[m2_key] = total[m2_key] + part[m2_key] + np.outer(delta, delta) * scale
    else:
        scale = np.divide(n_a * n_b, n, out=np.zeros_like(n, dtype=np.float64), where=n > 0)
        total[m2_key] = total[m2_key] + part[m2_key] + delta**2 * scale
    total[n_key] = n


def pool_clear(
    answers: Mapping[str, Mapping[str, np.ndarray]], query: AnalyticsQuery
) -> PooledMoments:
    """Merge the clear answers of several nodes (by node label)."""
    total: dict[str, np.ndarray] | None = None
    for node, arrays in answers.items():
        part = _validated(node, arrays, query, secure=False)
        if total is None:
            total = dict(part)
            continue
        _merge(total, part, ("n", "mean", "m2"))
        if query.correlation:
            _merge(total, part, ("corr_n", "corr_mean", "corr_comoment"))
        total["missing"] = total["missing"] + part["missing"]
        total["min"] = np.minimum(total["min"], part["min"])
        total["max"] = np.maximum(total["max"], part["max"])
        for name in part:
            if name.startswith("hist/"):
                total[name] = total[name] + part[name]
    if total is None:
        raise PayloadError("no node answered: there is nothing to pool")
    return PooledMoments(
        n=total["n"],
        missing=total["missing"],
        mean=total["mean"],
        m2=total["m2"],
        minimum=total["min"],
        maximum=total["max"],
        clipped=None,
        histograms=_histograms(total, query),
        corr_n=float(total["corr_n"][0]) if query.correlation else None,
        comoment=total["corr_comoment"] if query.correlation else None,
    )


def pool_secure(sums: Mapping[str, np.ndarray], query: AnalyticsQuery) -> PooledMoments:
    """The moments from the unmasked sums over the nodes (rescaled values, see module doc)."""
    total = _validated("sum", sums, query, secure=True)
    counts = {name: np.rint(total[name]) for name in ("n", "missing", "clipped")}
    ranges = query.require_ranges()
    low = np.array([r.low for r in ranges])
    width = np.array([r.high - r.low for r in ranges])
    n = counts["n"]
    safe_n = np.maximum(n, 1.0)
    mean_u = total["s1"] / safe_n
    # Fixed-point rounding can push a near-zero spread a hair below zero.
    m2_u = np.maximum(total["s2"] - total["s1"] * mean_u, 0.0)
    moments = PooledMoments(
        n=n,
        missing=counts["missing"],
        mean=low + width * mean_u,
        m2=width**2 * m2_u,
        minimum=None,
        maximum=None,
        clipped=counts["clipped"],
        histograms={i: np.rint(h) for i, h in _histograms(total, query).items()},
    )
    if query.correlation:
        corr_n = float(np.rint(total["corr_n"][0]))
        s1 = total["corr_s1"]
        comoment_u = total["corr_s2"] - np.outer(s1, s1) / max(corr_n, 1.0)
        moments.corr_n = corr_n
        moments.comoment = comoment_u * np.outer(width, width)
    return moments


def _histograms(total: Mapping[str, np.ndarray], query: AnalyticsQuery) -> dict[int, np.ndarray]:
    return {
        index: total[histogram_name(index)]
        for index, column in enumerate(query.columns)
        if query.histogram_for(column) is not None
    }
