"""A node's answer to a cohort-statistics request: checks, then its sufficient statistics.

Runs in the daemon (no researcher code is executed: the node reads its own data with pandas
or numpy). The answer is a payload: the clear statistics, or under SecAgg the sums masked
by this node's double masker in the session the researcher set up, labelled like any
masked sum (``common.secagg.protect.mask_label``) so the same unmasking serves both.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from common.analytics import AnalyticsQuery, clear_statistics, secure_sums
from common.errors import AnalyticsError
from common.payload import Sections
from common.proto import fedloom_pb2 as pb
from common.secagg.protect import PayloadMasker, mask_label
from node.analytics.table import numeric_columns, read_table
from node.registry import DatasetRecord

__all__ = ["analytics_answer", "check_cohort"]


def check_cohort(
    values: np.ndarray, query: AnalyticsQuery, min_cohort: int, dataset: str, fix: str
) -> None:
    """Refuse when a column (or, for a correlation, the complete rows) is below ``min_cohort``.

    The message gives the threshold, not the count: the count is what the threshold hides.
    """
    present = ~np.isnan(values)
    for index, column in enumerate(query.columns):
        if int(present[:, index].sum()) < min_cohort:
            raise AnalyticsError(
                f"column {column!r} of dataset {dataset!r} has fewer non-missing values than this "
                f"node's minimum cohort size of {min_cohort}, so the node refuses to describe it; "
                f"its operator may change the threshold with `{fix}`"
            )
    if query.correlation and int(present.all(axis=1).sum()) < min_cohort:
        raise AnalyticsError(
            f"dataset {dataset!r} has fewer rows complete in {list(query.columns)} than this "
            f"node's minimum cohort size of {min_cohort}, so the node refuses their correlation; "
            f"its operator may change the threshold with `{fix}`"
        )


def analytics_answer(
    request: pb.AnalyticsRequest,
    record: DatasetRecord,
    *,
    min_cohort: int,
    fix: str,
    masker: Callable[[], PayloadMasker],
) -> tuple[Sections, int]:
    """The payload sections answering ``request`` over ``record``, and the dataset's row count.

    ``masker`` is called only under SecAgg, once the data passed every check. ``fix`` is the
    command that changes the threshold, quoted in a refusal.
    """
    query = AnalyticsQuery.from_request(request)
    secure = request.secagg.enabled
    if secure:
        query.require_ranges()
    values = numeric_columns(read_table(record), query.columns, record.name)
    check_cohort(values, query, min_cohort, record.name, fix)
    if not secure:
        return {pb.PAYLOAD_SECTION_UNSPECIFIED: clear_statistics(values, query)}, len(values)
    if len(values) > request.secagg.clip:
        raise AnalyticsError(
            f"dataset {record.name!r} has {len(values)} rows, more than the SecAgg clip "
            f"{request.secagg.clip:g} its counts must fit in: the researcher must raise it"
        )
    sink = masker()
    section = pb.PAYLOAD_SECTION_SECAGG_SUMS
    masked = {
        name: sink.mask(mask_label(section, name), array)
        for name, array in secure_sums(values, query).items()
    }
    return {section: masked}, len(values)
