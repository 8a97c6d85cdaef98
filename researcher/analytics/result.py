"""The typed result of a cohort-statistics query, built from the pooled moments.

Variance is the sample variance (``ddof=1``, as pandas reports it). A ``q`` quantile is read
off the pooled histogram: the bin holding the ``ceil(q n)``-th smallest value is found from
the counts and the quantile is interpolated linearly inside it, so it lies within one bin
width (``quantile_error``) of the pooled data's exact quantile in the inverted-CDF sense
(``numpy.quantile(..., method="inverted_cdf")``: the smallest value with at least a
fraction ``q`` of the values at or below it). A quantile that falls among the values below
or above the histogram's bins is ``None``: only a bound is known.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from common.analytics import AnalyticsQuery, HistogramSpec
from researcher.analytics.pooling import PooledMoments

__all__ = [
    "CohortStatistics",
    "ColumnStatistics",
    "Correlation",
    "Histogram",
    "build_statistics",
    "histogram_quantile",
]

#: What `min`/`max` are under SecAgg: the declared range, never the data's extremes.
DECLARED_RANGE = "declared range (SecAgg: the data's extremes are not revealed)"
OBSERVED = "observed"


@dataclass(frozen=True)
class Histogram:
    """Pooled counts in ``len(edges) - 1`` bins, and of the values below and above them."""

    edges: list[float]
    counts: list[int]
    below: int
    above: int


@dataclass(frozen=True)
class ColumnStatistics:
    """One column over the whole cohort (missing values excluded)."""

    name: str
    count: int
    missing: int
    mean: float
    variance: float  # sample variance, ddof=1 (NaN below 2 values)
    std: float
    min: float
    max: float
    min_max: str  # OBSERVED, or DECLARED_RANGE under SecAgg
    clipped: int | None = None  # SecAgg: values clipped into the declared range
    histogram: Histogram | None = None
    quantiles: dict[float, float | None] = field(default_factory=dict)
    quantile_error: float | None = None  # the bin width: a bound on each quantile's error


@dataclass(frozen=True)
class Correlation:
    """Pearson correlation over the rows complete in every column."""

    columns: list[str]
    matrix: list[list[float]]
    rows: int


@dataclass(frozen=True)
class CohortStatistics:
    """What `cohort_statistics` returns: per-column statistics, correlation, who answered."""

    tags: list[str]
    columns: dict[str, ColumnStatistics]
    nodes: list[str]
    secagg: bool
    correlation: Correlation | None = None
    failures: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN and infinities as None; quantile keys as strings)."""
        data = asdict(self)
        for column in data["columns"].values():
            column["quantiles"] = {f"{q:g}": v for q, v in column["quantiles"].items()}
        safe: dict[str, Any] = _json_safe(data)
        return safe


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def histogram_quantile(spec: HistogramSpec, counts: np.ndarray, q: float) -> float | None:
    """The ``q`` quantile from ``[below, bins..., above]`` counts, linear inside its bin."""
    total = float(counts.sum())
    if total <= 0:
        return None
    target = q * total
    cumulative = np.cumsum(counts)
    below = float(counts[0])
    if target < below or (target > float(cumulative[-2]) and counts[-1] > 0):
        return None  # among values outside the bins: only a bound is known
    edges = spec.edges
    for index in range(1, spec.bins + 1):
        before = float(cumulative[index - 1])
        inside = float(counts[index])
        if target <= before + inside and inside > 0:
            fraction = (target - before) / inside
            return float(edges[index - 1] + fraction * (edges[index] - edges[index - 1]))
    return float(edges[-1])


def build_statistics(
    moments: PooledMoments,
    query: AnalyticsQuery,
    *,
    tags: Sequence[str],
    nodes: Sequence[str],
    quantiles: Sequence[float],
    secagg: bool,
    failures: dict[str, str],
    sum_error: float = 0.0,
) -> CohortStatistics:
    """The typed result of a pooled query; ``sum_error`` bounds each SecAgg sum's
    fixed-point error in units of the declared range."""
    columns: dict[str, ColumnStatistics] = {}
    for index, name in enumerate(query.columns):
        n = int(moments.n[index])
        variance = float(moments.m2[index] / (n - 1)) if n > 1 else math.nan
        spec = query.histogram_for(name)
        histogram = None
        column_quantiles: dict[float, float | None] = {}
        if spec is not None:
            counts = moments.histograms[index]
            histogram = Histogram(
                edges=[float(e) for e in spec.edges],
                counts=[int(c) for c in counts[1:-1]],
                below=int(counts[0]),
                above=int(counts[-1]),
            )
            column_quantiles = {q: histogram_quantile(spec, counts, q) for q in quantiles}
        if moments.minimum is not None and moments.maximum is not None:
            low, high, source = (
                float(moments.minimum[index]),
                float(moments.maximum[index]),
                OBSERVED,
            )
        else:
            declared = query.range_for(name)
            assert declared is not None  # SecAgg queries require a range for every column
            low, high, source = declared.low, declared.high, DECLARED_RANGE
        columns[name] = ColumnStatistics(
            name=name,
            count=n,
            missing=int(moments.missing[index]),
            mean=float(moments.mean[index]),
            variance=variance,
            std=math.sqrt(variance) if variance >= 0 else math.nan,
            min=low,
            max=high,
            min_max=source,
            clipped=None if moments.clipped is None else int(moments.clipped[index]),
            histogram=histogram,
            quantiles=column_quantiles,
            quantile_error=spec.width if spec is not None and quantiles else None,
        )
    correlation = None
    if moments.comoment is not None and moments.corr_n is not None:
        diagonal = np.sqrt(np.clip(np.diag(moments.comoment), 0.0, None))
        with np.errstate(invalid="ignore", divide="ignore"):
            matrix = moments.comoment / np.outer(diagonal, diagonal)
        matrix = np.clip(matrix, -1.0, 1.0)
        np.fill_diagonal(matrix, 1.0)
        correlation = Correlation(list(query.columns), matrix.tolist(), int(moments.corr_n))
    notes = []
    if secagg:
        notes.append(
            "SecAgg: only sums over the nodes were revealed; values were clipped into each "
            "column's declared range before summing, and min/max show that range. Fixed-point "
            f"error: each sum is within {sum_error:.2g} of exact in units of the declared range, "
            "so a mean is within (range width) x that / count."
        )
    if quantiles:
        notes.append(
            "quantiles are interpolated inside histogram bins: each is within one bin width "
            "of the exact quantile"
        )
    return CohortStatistics(
        tags=list(tags),
        columns=columns,
        nodes=list(nodes),
        secagg=secagg,
        correlation=correlation,
        failures=dict(failures),
        notes=notes,
    )
