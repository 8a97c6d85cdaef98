"""Cohort statistics shared by researcher and node: the query and the sufficient statistics."""

from common.analytics.query import MAX_BINS, AnalyticsQuery, HistogramSpec, ValueRange
from common.analytics.sufficient import (
    CLEAR_ARRAYS,
    SECURE_ARRAYS,
    check_shapes,
    clear_statistics,
    expected_shapes,
    histogram_counts,
    histogram_name,
    secure_sums,
)

__all__ = [
    "CLEAR_ARRAYS",
    "MAX_BINS",
    "SECURE_ARRAYS",
    "AnalyticsQuery",
    "HistogramSpec",
    "ValueRange",
    "check_shapes",
    "clear_statistics",
    "expected_shapes",
    "histogram_counts",
    "histogram_name",
    "secure_sums",
]
