"""Federated cohort statistics before training: `cohort_statistics(...)` and its CLI."""

from common.analytics import AnalyticsQuery, HistogramSpec, ValueRange
from researcher.analytics.display import print_statistics
from researcher.analytics.result import (
    CohortStatistics,
    ColumnStatistics,
    Correlation,
    Histogram,
)
from researcher.analytics.run import (
    ANALYTICS_CLIP,
    ANALYTICS_FRACTION_BITS,
    cohort_statistics,
    run_query,
)

__all__ = [
    "ANALYTICS_CLIP",
    "ANALYTICS_FRACTION_BITS",
    "AnalyticsQuery",
    "CohortStatistics",
    "ColumnStatistics",
    "Correlation",
    "Histogram",
    "HistogramSpec",
    "ValueRange",
    "cohort_statistics",
    "print_statistics",
    "run_query",
]
