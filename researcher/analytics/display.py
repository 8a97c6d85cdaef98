"""Printing a `CohortStatistics` as tables (the CLI's default output)."""

from __future__ import annotations

import math
from typing import Any

from researcher.analytics.result import OBSERVED, CohortStatistics
from researcher.tables import Column, print_table

__all__ = ["print_statistics"]


def _number(value: float | int | None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.6g}"


def print_statistics(console: Any, stats: CohortStatistics) -> None:
    """Per-column statistics, quantiles, histograms and the correlation matrix."""
    secure = " under SecAgg" if stats.secagg else ""
    title = (
        f"cohort statistics over {len(stats.nodes)} node(s) with tags "
        f"{', '.join(stats.tags)}{secure}"
    )
    first = next(iter(stats.columns.values()))
    bounds = ("min", "max") if first.min_max == OBSERVED else ("range low", "range high")
    names = ["column", "count", "missing", "mean", "variance", "std", *bounds]
    if stats.secagg:
        names.append("clipped")
    quantiles = sorted({q for c in stats.columns.values() for q in c.quantiles})
    names += [f"q{q:g}" for q in quantiles]
    rows = []
    for column in stats.columns.values():
        row = [
            column.name,
            _number(column.count),
            _number(column.missing),
            _number(column.mean),
            _number(column.variance),
            _number(column.std),
            _number(column.min),
            _number(column.max),
        ]
        if stats.secagg:
            row.append(_number(column.clipped))
        row += [_number(column.quantiles.get(q)) for q in quantiles]
        rows.append(row)
    columns = [Column(names[0], numeric=False)] + [Column(n) for n in names[1:]]
    print_table(console, title, columns, rows)
    for column in stats.columns.values():
        if column.histogram is None:
            continue
        h = column.histogram
        cells = [
            [f"[{low:g}, {high:g}{']' if i == len(h.counts) - 1 else ')'}", str(count)]
            for i, (low, high, count) in enumerate(
                zip(h.edges, h.edges[1:], h.counts, strict=False)
            )
        ]
        cells = [[f"< {h.edges[0]:g}", str(h.below)], *cells, [f"> {h.edges[-1]:g}", str(h.above)]]
        print_table(
            console, f"histogram of {column.name}", [Column("bin", False), Column("count")], cells
        )
    if stats.correlation is not None:
        corr = stats.correlation
        cells = [
            [name, *(_number(v) for v in row)]
            for name, row in zip(corr.columns, corr.matrix, strict=True)
        ]
        print_table(
            console,
            f"correlation over {corr.rows} complete row(s)",
            [Column("", False), *(Column(c) for c in corr.columns)],
            cells,
        )
    for note in stats.notes:
        console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)
    for node, why in sorted(stats.failures.items()):
        console.print(
            f"node {node} did not answer: {why}", markup=False, highlight=False, soft_wrap=True
        )
