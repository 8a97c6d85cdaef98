"""What this node did for researchers: one row per task, written by the daemon as it runs it.

A row is inserted when a task starts (``running``) and completed when its reply is sent
(``ok`` or ``failed``), so the console shows a round in progress as well as finished ones.
Both writes lie on the round's critical path, so they are not flushed to disk (a flush took
5-25 ms each): they survive the daemon dying, and a power cut can lose only the last rows of
this display, never a privacy budget or an approval (those commits stay durable).
Losses and metrics are the node's local values for that round, as sent in the reply.
"""

from __future__ import annotations

import builtins
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from node.home import connect_database, create_tables, utc_now

__all__ = ["ServedTask", "ServedTasks", "TaskState"]

TaskState = Literal["running", "ok", "failed"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS served_tasks (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id       TEXT NOT NULL UNIQUE,
    experiment_id TEXT NOT NULL,
    round         INTEGER NOT NULL,
    kind          TEXT NOT NULL,
    researcher    TEXT NOT NULL,
    plan_id       TEXT NOT NULL DEFAULT '',
    plan_class    TEXT NOT NULL DEFAULT '',
    dataset       TEXT NOT NULL DEFAULT '',
    state         TEXT NOT NULL CHECK (state IN ('running', 'ok', 'failed')),
    started_at    TEXT NOT NULL,
    seconds       REAL,
    n_samples     INTEGER,
    n_steps       INTEGER,
    losses        TEXT NOT NULL DEFAULT '[]',  -- JSON list of floats
    metrics       TEXT NOT NULL DEFAULT '{}',  -- JSON object name -> float
    error_kind    TEXT NOT NULL DEFAULT '',
    error_message TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS served_tasks_by_experiment ON served_tasks(experiment_id, round)
"""


@dataclass(frozen=True)
class ServedTask:
    """One task the node ran (or is running) for a researcher."""

    seq: int
    task_id: str
    experiment_id: str
    round: int
    kind: str
    researcher: str
    plan_id: str
    plan_class: str
    dataset: str
    state: TaskState
    started_at: str
    seconds: float | None
    n_samples: int | None
    n_steps: int | None
    losses: tuple[float, ...]
    metrics: dict[str, float]
    error_kind: str
    error_message: str

    @property
    def last_loss(self) -> float | None:
        """The loss of the last local step, the figure a round's row shows."""
        return self.losses[-1] if self.losses else None


def _task(row: sqlite3.Row) -> ServedTask:
    return ServedTask(
        seq=row["seq"],
        task_id=row["task_id"],
        experiment_id=row["experiment_id"],
        round=row["round"],
        kind=row["kind"],
        researcher=row["researcher"],
        plan_id=row["plan_id"],
        plan_class=row["plan_class"],
        dataset=row["dataset"],
        state=row["state"],
        started_at=row["started_at"],
        seconds=row["seconds"],
        n_samples=row["n_samples"],
        n_steps=row["n_steps"],
        losses=tuple(json.loads(row["losses"])),
        metrics=json.loads(row["metrics"]),
        error_kind=row["error_kind"],
        error_message=row["error_message"],
    )


class ServedTasks:
    """The ``served_tasks`` table of the node database."""

    def __init__(self, db_path: Path | str) -> None:
        self.db_path = Path(db_path)
        create_tables(self.db_path, _SCHEMA)

    def started(
        self,
        task_id: str,
        experiment_id: str,
        round_number: int,
        kind: str,
        researcher: str,
        *,
        plan_id: str = "",
        plan_class: str = "",
        dataset: str = "",
    ) -> None:
        """Record a task the daemon begins (a re-sent task id restarts its row)."""
        with connect_database(self.db_path, write=True, durable=False) as conn:
            conn.execute("DELETE FROM served_tasks WHERE task_id = ?", (task_id,))
            conn.execute(
                "INSERT INTO served_tasks (task_id, experiment_id, round, kind, researcher,"
                " plan_id, plan_class, dataset, state, started_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'running', ?)",
                (
                    task_id,
                    experiment_id,
                    round_number,
                    kind,
                    researcher,
                    plan_id,
                    plan_class,
                    dataset,
                    utc_now(),
                ),
            )

    def finished(
        self,
        task_id: str,
        *,
        seconds: float,
        ok: bool,
        n_samples: int | None = None,
        n_steps: int | None = None,
        losses: tuple[float, ...] = (),
        metrics: dict[str, float] | None = None,
        error_kind: str = "",
        error_message: str = "",
        dataset: str | None = None,
    ) -> None:
        """Complete a task's row with its outcome."""
        with connect_database(self.db_path, write=True, durable=False) as conn:
            conn.execute(
                "UPDATE served_tasks SET state = ?, seconds = ?, n_samples = ?, n_steps = ?,"
                " losses = ?, metrics = ?, error_kind = ?, error_message = ?,"
                " dataset = COALESCE(?, dataset) WHERE task_id = ?",
                (
                    "ok" if ok else "failed",
                    seconds,
                    n_samples,
                    n_steps,
                    json.dumps(list(losses)),
                    json.dumps(metrics or {}),
                    error_kind,
                    error_message,
                    dataset,
                    task_id,
                ),
            )

    def list(
        self, experiment_id: str | None = None, *, after_seq: int = 0, limit: int = 1000
    ) -> builtins.list[ServedTask]:
        """Tasks in the order they started, optionally of one experiment or after a row."""
        where = "WHERE seq > ?" + (" AND experiment_id = ?" if experiment_id else "")
        params: tuple[object, ...] = (after_seq, experiment_id) if experiment_id else (after_seq,)
        with connect_database(self.db_path) as conn:
            rows = conn.execute(
                f"SELECT * FROM served_tasks {where} ORDER BY seq LIMIT ?", (*params, limit)
            ).fetchall()
        return [_task(row) for row in rows]

    def fingerprint(self) -> str:
        """A cheap value that changes whenever a task starts or finishes (for live pages)."""
        with connect_database(self.db_path) as conn:
            row = conn.execute(
                "SELECT COUNT(*) AS n, COALESCE(SUM(state != 'running'), 0) AS done,"
                " COALESCE(MAX(seq), 0) AS last FROM served_tasks"
            ).fetchone()
        return f"{row['n']}:{row['done']}:{row['last']}"

    def experiments(self) -> builtins.list[dict[str, object]]:
        """One summary per experiment served, most recent first."""
        with connect_database(self.db_path) as conn:
            rows = conn.execute(
                "SELECT experiment_id, researcher, MIN(started_at) AS first_at,"
                " MAX(started_at) AS last_at, COUNT(DISTINCT round) AS rounds,"
                " SUM(state = 'failed') AS errors, SUM(COALESCE(n_samples, 0)) AS samples"
                " FROM served_tasks WHERE kind = 'train' GROUP BY experiment_id"
                " ORDER BY MAX(seq) DESC"
            ).fetchall()
        return [dict(row) for row in rows]
