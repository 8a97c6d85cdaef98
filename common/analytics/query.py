"""What a cohort-statistics query asks: columns, histogram bins, correlation, declared ranges.

Built by the researcher (Python API or CLI flags), carried in an ``AnalyticsRequest`` and
rebuilt by the node, so both sides validate the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from common.errors import AnalyticsError
from common.proto import fedloom_pb2 as pb

__all__ = ["MAX_BINS", "AnalyticsQuery", "HistogramSpec", "ValueRange"]

#: Most bins a histogram may have: finer bins would single out individuals long before
#: they sharpen a quantile, and each bin is one more masked value under SecAgg.
MAX_BINS = 1000


def _split_assignment(text: str, what: str, example: str) -> tuple[str, list[str]]:
    column, sep, spec = text.partition("=")
    if not sep or not column.strip():
        raise AnalyticsError(
            f"{what} {text!r} is not COLUMN={example.split('=', 1)[1]}: e.g. {example}"
        )
    return column.strip(), spec.split(":")


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise AnalyticsError(f"{what}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise AnalyticsError(f"{what}: {text!r} is not a finite number")
    return value


@dataclass(frozen=True)
class ValueRange:
    """A column's declared range ``[low, high]``: under SecAgg, values are clipped into it."""

    column: str
    low: float
    high: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high):
            raise AnalyticsError(
                f"range of column {self.column!r} must have finite bounds with low < high, got "
                f"[{self.low}, {self.high}]"
            )

    @classmethod
    def parse(cls, text: str) -> ValueRange:
        """From ``COLUMN=LOW:HIGH`` (the CLI's ``--range``)."""
        column, parts = _split_assignment(text, "range", "age=0:120")
        if len(parts) != 2:
            raise AnalyticsError(f"range {text!r} is not COLUMN=LOW:HIGH, e.g. age=0:120")
        return cls(
            column, _number(parts[0], f"range {text!r}"), _number(parts[1], f"range {text!r}")
        )


@dataclass(frozen=True)
class HistogramSpec:
    """``bins`` equal bins over ``[low, high]`` for one column (the last bin includes ``high``)."""

    column: str
    low: float
    high: float
    bins: int

    def __post_init__(self) -> None:
        ValueRange(self.column, self.low, self.high)
        if isinstance(self.bins, bool) or not isinstance(self.bins, int):
            raise AnalyticsError(
                f"histogram of {self.column!r}: bins must be an int, got {self.bins!r}"
            )
        if not 1 <= self.bins <= MAX_BINS:
            raise AnalyticsError(
                f"histogram of {self.column!r}: bins must be between 1 and {MAX_BINS}, got {self.bins}"
            )

    @property
    def edges(self) -> np.ndarray:
        """The ``bins + 1`` bin edges."""
        return np.linspace(self.low, self.high, self.bins + 1)

    @property
    def width(self) -> float:
        """Width of one bin: the error bound of quantiles read off this histogram."""
        return (self.high - self.low) / self.bins

    @classmethod
    def parse(cls, text: str) -> HistogramSpec:
        """From ``COLUMN=LOW:HIGH:BINS`` (the CLI's ``--histogram``)."""
        column, parts = _split_assignment(text, "histogram", "age=0:100:10")
        if len(parts) != 3:
            raise AnalyticsError(
                f"histogram {text!r} is not COLUMN=LOW:HIGH:BINS, e.g. age=0:100:10"
            )
        try:
            bins = int(parts[2])
        except ValueError:
            raise AnalyticsError(
                f"histogram {text!r}: bins {parts[2]!r} is not an integer"
            ) from None
        where = f"histogram {text!r}"
        return cls(column, _number(parts[0], where), _number(parts[1], where), bins)


@dataclass(frozen=True)
class AnalyticsQuery:
    """The statistics asked of every node, validated on construction."""

    columns: tuple[str, ...]
    histograms: tuple[HistogramSpec, ...] = ()
    correlation: bool = False
    ranges: tuple[ValueRange, ...] = ()

    def __post_init__(self) -> None:
        if not self.columns:
            raise AnalyticsError("name at least one column, e.g. columns=['age', 'bmi']")
        duplicates = sorted({c for c in self.columns if self.columns.count(c) > 1})
        if duplicates:
            raise AnalyticsError(f"columns {duplicates} are named twice: name each column once")
        for kind, items in (("histogram", self.histograms), ("range", self.ranges)):
            named = [item.column for item in items]
            unknown = sorted(set(named) - set(self.columns))
            if unknown:
                raise AnalyticsError(
                    f"{kind} given for {unknown}, which are not among the queried columns "
                    f"{list(self.columns)}: add them to the columns"
                )
            twice = sorted({c for c in named if named.count(c) > 1})
            if twice:
                raise AnalyticsError(f"{kind} given twice for {twice}: give one per column")
        if self.correlation and len(self.columns) < 2:
            raise AnalyticsError("a correlation matrix needs at least two columns")

    def histogram_for(self, column: str) -> HistogramSpec | None:
        """The histogram asked for ``column``, if any."""
        return next((h for h in self.histograms if h.column == column), None)

    def range_for(self, column: str) -> ValueRange | None:
        """The declared range of ``column``: ``--range``, else its histogram's span."""
        declared = next((r for r in self.ranges if r.column == column), None)
        if declared is not None:
            return declared
        histogram = self.histogram_for(column)
        return None if histogram is None else ValueRange(column, histogram.low, histogram.high)

    def require_ranges(self) -> tuple[ValueRange, ...]:
        """Every column's declared range (SecAgg clips into them); refuse a column without one."""
        missing = [c for c in self.columns if self.range_for(c) is None]
        if missing:
            raise AnalyticsError(
                f"under SecAgg every column needs a declared range, which values are clipped into "
                f"so that sums of squares stay bounded; none for {missing}: add --range COLUMN=LOW:HIGH "
                f"(or ranges=[ValueRange(...)]) or a histogram over the column"
            )
        return tuple(r for r in (self.range_for(c) for c in self.columns) if r is not None)

    def to_request(self, dataset_name: str) -> pb.AnalyticsRequest:
        """The request sent to one node (its SecAgg context is added by the caller)."""
        return pb.AnalyticsRequest(
            dataset_name=dataset_name,
            columns=list(self.columns),
            histograms=[
                pb.AnalyticsHistogram(column=h.column, low=h.low, high=h.high, bins=h.bins)
                for h in self.histograms
            ],
            correlation=self.correlation,
            ranges=[
                pb.AnalyticsRange(column=r.column, low=r.low, high=r.high) for r in self.ranges
            ],
        )

    @classmethod
    def from_request(cls, request: pb.AnalyticsRequest) -> AnalyticsQuery:
        """The query a node was sent (validated again: the node trusts no researcher)."""
        return cls(
            columns=tuple(request.columns),
            histograms=tuple(
                HistogramSpec(h.column, h.low, h.high, int(h.bins)) for h in request.histograms
            ),
            correlation=request.correlation,
            ranges=tuple(ValueRange(r.column, r.low, r.high) for r in request.ranges),
        )
