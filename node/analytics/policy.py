"""The operator's minimum cohort size per dataset, kept in the node's SQLite database.

A node answers cohort statistics only when every queried column has at least that many
non-missing values (and, for a correlation, that many complete rows): statistics over a
handful of people come close to describing each of them. A dataset with no setting of its
own has ``DEFAULT_MIN_COHORT``.
"""

from __future__ import annotations

from pathlib import Path

from common.errors import AnalyticsError
from node.home import connect_database, create_tables
from node.registry import DatasetRegistry

__all__ = ["DEFAULT_MIN_COHORT", "CohortPolicy"]

#: Default minimum cohort: 10 is the smallest cell size many disclosure-control rules accept
#: (e.g. the UK ONS and several hospital data-sharing agreements), and it is what Fed-BioMed
#: users expect a node to refuse below.
DEFAULT_MIN_COHORT = 10

_SCHEMA = """
CREATE TABLE IF NOT EXISTS analytics_min_cohort (
    dataset    TEXT PRIMARY KEY REFERENCES datasets(name) ON DELETE CASCADE,
    min_cohort INTEGER NOT NULL
)
"""


class CohortPolicy:
    """Minimum cohort sizes of one node's datasets."""

    def __init__(self, db_path: Path | str) -> None:
        self._db = Path(db_path)
        DatasetRegistry(self._db)  # the datasets table the settings refer to
        create_tables(self._db, _SCHEMA)

    def min_cohort(self, dataset: str) -> int:
        """The smallest cohort the node answers statistics about for ``dataset``."""
        with connect_database(self._db) as conn:
            row = conn.execute(
                "SELECT min_cohort FROM analytics_min_cohort WHERE dataset = ?", (dataset,)
            ).fetchone()
        return DEFAULT_MIN_COHORT if row is None else int(row[0])

    def set_min_cohort(self, dataset: str, size: int) -> None:
        """Set ``dataset``'s minimum cohort; the dataset must be registered, ``size >= 1``."""
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise AnalyticsError(f"a minimum cohort size must be an integer >= 1, got {size!r}")
        DatasetRegistry(self._db).get(dataset)  # refuses an unknown dataset, naming the list
        with connect_database(self._db, write=True) as conn:
            conn.execute(
                "INSERT INTO analytics_min_cohort (dataset, min_cohort) VALUES (?, ?) "
                "ON CONFLICT(dataset) DO UPDATE SET min_cohort = excluded.min_cohort",
                (dataset, size),
            )
