"""The operator audit trail: who did what to this node's datasets and plans, when, from where.

Rows are appended by ``node.operator`` whenever the CLI or the console changes the
registry; they are never updated or deleted. ``to_csv`` is the export an auditor asks for.
"""

from __future__ import annotations

import csv
import io
import sqlite3
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import Literal

from node.home import connect_database, utc_now

__all__ = ["AuditEntry", "AuditTrail", "Source"]

#: Where an operator action came from.
Source = Literal["cli", "console"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_trail (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at      TEXT NOT NULL,
    source  TEXT NOT NULL CHECK (source IN ('cli', 'console')),
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    subject TEXT NOT NULL,
    detail  TEXT NOT NULL DEFAULT ''
)
"""


@dataclass(frozen=True)
class AuditEntry:
    """One operator action: ``actor`` is a user name (CLI) or a client address (console)."""

    id: int
    at: str
    source: Source
    actor: str
    action: str
    subject: str
    detail: str


def _entry(row: sqlite3.Row) -> AuditEntry:
    return AuditEntry(
        id=row["id"],
        at=row["at"],
        source=row["source"],
        actor=row["actor"],
        action=row["action"],
        subject=row["subject"],
        detail=row["detail"],
    )


class AuditTrail:
    """Append-only log of operator actions in the node database."""

    def __init__(self, db_path: Path | str) -> None:
        self.db_path = Path(db_path)
        with connect_database(self.db_path, write=True) as conn:
            conn.execute(_SCHEMA)

    def record(
        self, source: Source, actor: str, action: str, subject: str, detail: str = ""
    ) -> AuditEntry:
        """Append one action (e.g. ``plan.approve`` on a plan id) and return it."""
        at = utc_now()
        with connect_database(self.db_path, write=True) as conn:
            cursor = conn.execute(
                "INSERT INTO audit_trail (at, source, actor, action, subject, detail)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (at, source, actor, action, subject, detail),
            )
            entry_id = int(cursor.lastrowid or 0)
        return AuditEntry(entry_id, at, source, actor, action, subject, detail)

    def list(self, limit: int | None = None) -> list[AuditEntry]:
        """Entries, newest first; at most ``limit`` of them when given."""
        with connect_database(self.db_path) as conn:
            rows = conn.execute(
                "SELECT * FROM audit_trail ORDER BY id DESC LIMIT ?",
                (-1 if limit is None else limit,),
            ).fetchall()
        return [_entry(row) for row in rows]

    def to_csv(self) -> str:
        """Every entry, oldest first, as CSV with a header row."""
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow([f.name for f in fields(AuditEntry)])
        for entry in reversed(self.list()):
            writer.writerow([_csv_cell(value) for value in astuple(entry)])
        return out.getvalue()


#: First characters that make a spreadsheet treat a cell as a formula.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_cell(value: object) -> object:
    # A plan-rejection reason typed by someone is data, never a formula in the auditor's
    # spreadsheet (CSV injection): a leading quote keeps it text.
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value
