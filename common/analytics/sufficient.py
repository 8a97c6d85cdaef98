"""A node's sufficient statistics of its columns, as named float64 arrays.

Two forms, one per transport:

- clear: per column the count, missing count, mean and sum of squared deviations ``m2``
  (merged exactly and stably across nodes, Chan et al. 1979), min and max; over rows
  complete in every column, their count, mean vector and co-moment matrix.
- secure (SecAgg): only sums can be added under masks, so values are first clipped into the
  column's declared range ``[low, high]`` and rescaled to ``u = (x - low) / (high - low)`` in
  [0, 1]; the node sends the count, missing and clipped counts, ``sum u`` and ``sum u^2``,
  and over complete rows ``sum u`` and ``sum u u^T``. Every value then lies in ``[0, rows]``,
  which bounds the fixed-point range whatever the units.

In both forms each histogram is ``[below, bin_1 .. bin_k, above]`` counts of the non-missing
values, ``below`` and ``above`` counting those outside the bins. Index ``i`` in a name is the
column's position in the query (column names travel in the request, not in array names).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from common.analytics.query import AnalyticsQuery, HistogramSpec

__all__ = [
    "CLEAR_ARRAYS",
    "SECURE_ARRAYS",
    "check_shapes",
    "clear_statistics",
    "expected_shapes",
    "histogram_counts",
    "histogram_name",
    "secure_sums",
]

#: Per-column arrays (length = number of columns) of each form.
CLEAR_ARRAYS = ("n", "missing", "mean", "m2", "min", "max")
SECURE_ARRAYS = ("n", "missing", "clipped", "s1", "s2")


def histogram_name(index: int) -> str:
    """Name of the histogram array of the query's ``index``-th column."""
    return f"hist/{index}"


def histogram_counts(values: np.ndarray, spec: HistogramSpec) -> np.ndarray:
    """``[below, bins..., above]`` counts of the finite ``values`` (float64)."""
    present = values[~np.isnan(values)]
    counts, _ = np.histogram(present, bins=spec.edges)
    below = np.count_nonzero(present < spec.low)
    above = np.count_nonzero(present > spec.high)
    return np.concatenate([[below], counts, [above]]).astype(np.float64)


def expected_shapes(query: AnalyticsQuery, *, secure: bool) -> dict[str, tuple[int, ...]]:
    """Every array a node's answer to ``query`` holds, with its shape."""
    k = len(query.columns)
    shapes: dict[str, tuple[int, ...]] = {
        name: (k,) for name in (SECURE_ARRAYS if secure else CLEAR_ARRAYS)
    }
    for index, column in enumerate(query.columns):
        spec = query.histogram_for(column)
        if spec is not None:
            shapes[histogram_name(index)] = (spec.bins + 2,)
    if query.correlation:
        shapes["corr_n"] = (1,)
        shapes["corr_s1" if secure else "corr_mean"] = (k,)
        shapes["corr_s2" if secure else "corr_comoment"] = (k, k)
    return shapes


def _histograms(values: np.ndarray, query: AnalyticsQuery) -> dict[str, np.ndarray]:
    out = {}
    for index, column in enumerate(query.columns):
        spec = query.histogram_for(column)
        if spec is not None:
            out[histogram_name(index)] = histogram_counts(values[:, index], spec)
    return out


def _complete_rows(values: np.ndarray) -> np.ndarray:
    complete: np.ndarray = values[~np.isnan(values).any(axis=1)]
    return complete


def clear_statistics(values: np.ndarray, query: AnalyticsQuery) -> dict[str, np.ndarray]:
    """The clear form over ``values`` (rows x query columns, NaN = missing)."""
    present = ~np.isnan(values)
    n = present.sum(axis=0).astype(np.float64)
    safe_n = np.maximum(n, 1.0)
    filled = np.where(present, values, 0.0)
    mean = filled.sum(axis=0) / safe_n
    deviations = np.where(present, values - mean, 0.0)
    out = {
        "n": n,
        "missing": values.shape[0] - n,
        "mean": mean,
        "m2": (deviations**2).sum(axis=0),
        "min": np.where(present, values, np.inf).min(axis=0, initial=np.inf),
        "max": np.where(present, values, -np.inf).max(axis=0, initial=-np.inf),
        **_histograms(values, query),
    }
    if query.correlation:
        complete = _complete_rows(values)
        centre = complete.mean(axis=0) if len(complete) else np.zeros(values.shape[1])
        centred = complete - centre
        out["corr_n"] = np.array([float(len(complete))])
        out["corr_mean"] = centre
        out["corr_comoment"] = centred.T @ centred
    return out


def secure_sums(values: np.ndarray, query: AnalyticsQuery) -> dict[str, np.ndarray]:
    """The secure form over ``values``: sums only, of values clipped into the declared ranges."""
    ranges = query.require_ranges()
    low = np.array([r.low for r in ranges])
    high = np.array([r.high for r in ranges])
    present = ~np.isnan(values)
    with np.errstate(invalid="ignore"):  # NaN compares False: missing values are not clipped
        clipped = ((values < low) | (values > high)).sum(axis=0).astype(np.float64)
    scaled = (np.clip(values, low, high) - low) / (high - low)
    filled = np.where(present, scaled, 0.0)
    n = present.sum(axis=0).astype(np.float64)
    out = {
        "n": n,
        "missing": values.shape[0] - n,
        "clipped": clipped,
        "s1": filled.sum(axis=0),
        "s2": (filled**2).sum(axis=0),
        **_histograms(values, query),
    }
    if query.correlation:
        complete = _complete_rows(scaled)
        out["corr_n"] = np.array([float(len(complete))])
        out["corr_s1"] = complete.sum(axis=0)
        out["corr_s2"] = complete.T @ complete
    return out


def check_shapes(
    arrays: Mapping[str, np.ndarray], query: AnalyticsQuery, *, secure: bool
) -> list[str]:
    """Problems with ``arrays`` as an answer to ``query`` (empty when it is well formed)."""
    expected = expected_shapes(query, secure=secure)
    problems = [f"missing array {name!r}" for name in sorted(set(expected) - set(arrays))]
    problems += [f"unexpected array {name!r}" for name in sorted(set(arrays) - set(expected))]
    for name, shape in expected.items():
        if name in arrays and tuple(arrays[name].shape) != shape:
            problems.append(
                f"array {name!r} has shape {tuple(arrays[name].shape)}, expected {shape}"
            )
    return problems
