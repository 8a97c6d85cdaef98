"""The node's privacy ledger: budgets on datasets and the DP-SGD steps spent, in its SQLite DB.

One row per train reply the node sent under record-level DP: the steps it released
(sigma, sample rate, count), for which experiment, researcher and dataset. A row is written
only once the round trained and before its parameters leave the node; a refused round
writes nothing. ε is recomputed from the rows (common.privacy.accountant), so the ledger
survives restarts and accountant upgrades alike.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from pathlib import Path

from common.errors import DatasetError
from common.privacy.accountant import DpSteps
from common.privacy.budget import BUDGET_ACCOUNTANT, BUDGET_SCOPES, PrivacyBudget
from node.home import connect_database, create_tables, utc_now

__all__ = ["BudgetStatus", "PrivacyLedger"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dataset_budgets (
    dataset TEXT PRIMARY KEY,
    epsilon REAL NOT NULL,
    delta   REAL NOT NULL,
    scope   TEXT NOT NULL CHECK (scope IN ('experiment', 'researcher')),
    set_at  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS dp_spent (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id          TEXT NOT NULL UNIQUE,
    experiment_id    TEXT NOT NULL,
    researcher       TEXT NOT NULL,
    dataset          TEXT NOT NULL,
    round            INTEGER NOT NULL,
    noise_multiplier REAL NOT NULL,
    sample_rate      REAL NOT NULL,
    steps            INTEGER NOT NULL,
    recorded_at      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS dp_spent_by_dataset ON dp_spent(dataset, experiment_id)
"""


@dataclass(frozen=True)
class BudgetStatus:
    """A dataset's budget and the largest ε any scope has spent of it."""

    budget: PrivacyBudget
    spent_max: float

    def describe(self) -> str:
        return f"{self.budget.describe()} (most spent: ε = {self.spent_max:.3f})"


class PrivacyLedger:
    """The `dataset_budgets` and `dp_spent` tables of the node database."""

    def __init__(self, db_path: Path | str) -> None:
        self.db_path = Path(db_path)
        create_tables(self.db_path, _SCHEMA)

    def set_budget(self, dataset: str, epsilon: float, delta: float, scope: str) -> PrivacyBudget:
        """Set (or replace) the budget of `dataset`."""
        if scope not in BUDGET_SCOPES:
            raise DatasetError(
                f"budget scope {scope!r} is not one of {list(BUDGET_SCOPES)}: pass --per "
                "experiment or --per researcher"
            )
        if not epsilon > 0 or not 0 < delta < 1:
            raise DatasetError(
                f"a privacy budget needs ε > 0 and 0 < δ < 1, got ε = {epsilon}, δ = {delta}"
            )
        with connect_database(self.db_path, write=True) as conn:
            conn.execute(
                "INSERT OR REPLACE INTO dataset_budgets (dataset, epsilon, delta, scope, set_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (dataset, float(epsilon), float(delta), scope, utc_now()),
            )
        return PrivacyBudget(float(epsilon), float(delta), scope)

    def remove_budget(self, dataset: str) -> bool:
        with connect_database(self.db_path, write=True) as conn:
            cursor = conn.execute("DELETE FROM dataset_budgets WHERE dataset = ?", (dataset,))
        return cursor.rowcount > 0

    def budget(self, dataset: str) -> PrivacyBudget | None:
        with connect_database(self.db_path) as conn:
            row = conn.execute(
                "SELECT epsilon, delta, scope FROM dataset_budgets WHERE dataset = ?", (dataset,)
            ).fetchone()
        return None if row is None else PrivacyBudget(row["epsilon"], row["delta"], row["scope"])

    def record(
        self,
        *,
        task_id: str,
        experiment_id: str,
        researcher: str,
        dataset: str,
        round_number: int,
        steps: DpSteps,
    ) -> None:
        """Record the DP-SGD steps of a reply about to leave the node."""
        with connect_database(self.db_path, write=True) as conn:
            conn.execute(
                "INSERT OR REPLACE INTO dp_spent (task_id, experiment_id, researcher, dataset,"
                " round, noise_multiplier, sample_rate, steps, recorded_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    task_id,
                    experiment_id,
                    researcher,
                    dataset,
                    round_number,
                    steps.noise_multiplier,
                    steps.sample_rate,
                    steps.steps,
                    utc_now(),
                ),
            )

    def history(
        self,
        dataset: str,
        *,
        experiment_id: str | None = None,
        researcher: str | None = None,
    ) -> builtins.list[DpSteps]:
        """The steps spent on `dataset`, optionally by one experiment or one researcher."""
        where, params = "dataset = ?", [dataset]
        if experiment_id is not None:
            where, params = where + " AND experiment_id = ?", [*params, experiment_id]
        if researcher is not None:
            where, params = where + " AND researcher = ?", [*params, researcher]
        with connect_database(self.db_path) as conn:
            rows = conn.execute(
                f"SELECT noise_multiplier, sample_rate, steps FROM dp_spent WHERE {where}"
                " ORDER BY seq",
                params,
            ).fetchall()
        return [DpSteps(r["noise_multiplier"], r["sample_rate"], r["steps"]) for r in rows]

    def experiment_history(self, experiment_id: str) -> builtins.list[DpSteps]:
        """Every step an experiment spent on this node (all its datasets)."""
        with connect_database(self.db_path) as conn:
            rows = conn.execute(
                "SELECT noise_multiplier, sample_rate, steps FROM dp_spent"
                " WHERE experiment_id = ? ORDER BY seq",
                (experiment_id,),
            ).fetchall()
        return [DpSteps(r["noise_multiplier"], r["sample_rate"], r["steps"]) for r in rows]

    def scope_history(
        self, dataset: str, budget: PrivacyBudget, *, experiment_id: str, researcher: str
    ) -> builtins.list[DpSteps]:
        """The steps that count against `budget` for this experiment or researcher."""
        if budget.scope == "experiment":
            return self.history(dataset, experiment_id=experiment_id)
        return self.history(dataset, researcher=researcher)

    def status(self, dataset: str) -> BudgetStatus | None:
        """The budget of `dataset` and the most any scope has spent of it (imports Opacus)."""
        from common.privacy.accountant import epsilon_spent

        budget = self.budget(dataset)
        if budget is None:
            return None
        column = "experiment_id" if budget.scope == "experiment" else "researcher"
        with connect_database(self.db_path) as conn:
            keys = [
                r[0]
                for r in conn.execute(
                    f"SELECT DISTINCT {column} FROM dp_spent WHERE dataset = ?", (dataset,)
                ).fetchall()
            ]
        spent = [
            epsilon_spent(
                self.history(dataset, experiment_id=key)
                if budget.scope == "experiment"
                else self.history(dataset, researcher=key),
                budget.delta,
                BUDGET_ACCOUNTANT,
            )
            for key in keys
        ]
        return BudgetStatus(budget, max(spent, default=0.0))
