"""Cohort statistics on the node: the dataset's table, the minimum cohort, the answer."""

from node.analytics.answer import analytics_answer, check_cohort
from node.analytics.policy import DEFAULT_MIN_COHORT, CohortPolicy
from node.analytics.table import (
    TABLE_READERS,
    TableReader,
    numeric_columns,
    read_table,
    register_table_reader,
)

__all__ = [
    "DEFAULT_MIN_COHORT",
    "TABLE_READERS",
    "CohortPolicy",
    "TableReader",
    "analytics_answer",
    "check_cohort",
    "numeric_columns",
    "read_table",
    "register_table_reader",
]
