"""Training-plan approval: which code the node operator lets run on this node's data.

A plan is identified by the SHA-256 of its canonical source (``plan_hash``); its short
id, the first 12 hex digits, is what commands take (any unambiguous prefix of at least
``MIN_PREFIX_LENGTH`` digits works too). A plan the node has never seen is recorded as
``pending`` with the time and the researcher that asked; only the operator moves it to
``approved`` or ``rejected`` (and may change their mind later).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from common.errors import PlanError
from common.plan_hash import canonical_source, plan_hash
from node.home import connect_database, utc_now

__all__ = [
    "PLAN_ID_LENGTH",
    "PlanRecord",
    "PlanRegistry",
    "PlanStatus",
    "canonical_source",
    "plan_hash",
]

PlanStatus = Literal["approved", "rejected", "pending"]

#: Hex digits of a short plan id: 48 bits, unique among any realistic number of plans,
#: short enough to type (the same length as node ids and git's long short-hashes).
PLAN_ID_LENGTH = 12
#: Shortest hash prefix a command accepts: shorter prefixes are too easy to mistype into
#: approving the wrong plan.
MIN_PREFIX_LENGTH = 6
#: Largest plan source the node stores. Real plans are a few hundred lines (~20 KiB);
#: 1 MiB leaves room for embedded constants while capping what a misbehaving researcher
#: can write into node.db.
MAX_SOURCE_BYTES = 1 << 20

_HEX = re.compile(r"[0-9a-f]+")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS plans (
    sha256       TEXT PRIMARY KEY,
    class_name   TEXT NOT NULL,
    source       TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'rejected')),
    researcher   TEXT NOT NULL,
    requested_at TEXT NOT NULL,
    decided_at   TEXT,
    reason       TEXT
)
"""


@dataclass(frozen=True)
class PlanRecord:
    """A training plan known to the node, with the operator's decision (if any)."""

    sha256: str
    class_name: str
    source: str
    status: PlanStatus
    researcher: str
    requested_at: str
    decided_at: str | None
    reason: str | None = None

    @property
    def plan_id(self) -> str:
        """Short id shown and accepted by the CLI: the first 12 hex digits of the hash."""
        return self.sha256[:PLAN_ID_LENGTH]

    def to_dict(self, *, with_source: bool = True) -> dict[str, Any]:
        """JSON-ready dict with the short ``id``; ``with_source=False`` leaves the source out."""
        data = {"id": self.plan_id, **asdict(self)}
        if not with_source:
            del data["source"]
        return data


def _record(row: sqlite3.Row) -> PlanRecord:
    return PlanRecord(
        sha256=row["sha256"],
        class_name=row["class_name"],
        source=row["source"],
        status=row["status"],
        researcher=row["researcher"],
        requested_at=row["requested_at"],
        decided_at=row["decided_at"],
        reason=row["reason"],
    )


class PlanRegistry:
    """Training plans seen by a node and their approval status, in its SQLite database."""

    def __init__(self, db_path: Path | str) -> None:
        self.db_path = Path(db_path)
        with connect_database(self.db_path, write=True) as conn:
            conn.execute(_SCHEMA)
            columns = {row["name"] for row in conn.execute("PRAGMA table_info(plans)")}
            if "reason" not in columns:  # homes created before decisions carried a reason
                conn.execute("ALTER TABLE plans ADD COLUMN reason TEXT")

    def status(self, sha256: str) -> PlanStatus | None:
        """Status of the plan with this full hash, ``None`` when the node never saw it."""
        with connect_database(self.db_path) as conn:
            row = conn.execute(
                "SELECT status FROM plans WHERE sha256 = ?", (sha256.lower(),)
            ).fetchone()
        return None if row is None else row["status"]

    def record_request(
        self, sha256: str, class_name: str, source: str, researcher: str
    ) -> PlanRecord:
        """Note that ``researcher`` asked to run a plan; a plan never seen becomes pending.

        ``source`` may be empty when the researcher believes the node already knows the
        hash (it sends a plan's source only on first use). A known plan is returned
        unchanged. Raises ``PlanError`` when the source does not hash to ``sha256`` or an
        unknown hash comes without source.
        """
        sha256 = sha256.lower()
        if not class_name.isidentifier():
            raise PlanError(f"training plan class name {class_name!r} is not a Python identifier")
        if source:
            if len(source.encode("utf-8")) > MAX_SOURCE_BYTES:
                raise PlanError(
                    f"training plan {class_name} is larger than {MAX_SOURCE_BYTES >> 10} KiB: "
                    "this node refuses to store it; keep data and weights out of the plan source"
                )
            actual = plan_hash(source)
            if actual != sha256:
                raise PlanError(
                    f"training plan {class_name} announced hash {sha256[:PLAN_ID_LENGTH]} but its "
                    f"source hashes to {actual[:PLAN_ID_LENGTH]}: the researcher must hash the "
                    "canonical source (plan_hash)"
                )
        with connect_database(self.db_path, write=True) as conn:
            row = conn.execute("SELECT * FROM plans WHERE sha256 = ?", (sha256,)).fetchone()
            if row is not None:
                return _record(row)
            if not source:
                raise PlanError(
                    f"training plan {class_name} ({sha256[:PLAN_ID_LENGTH]}) is unknown to this "
                    "node and came without its source: the researcher must send the source"
                )
            record = PlanRecord(
                sha256=sha256,
                class_name=class_name,
                source=canonical_source(source),
                status="pending",
                researcher=researcher,
                requested_at=utc_now(),
                decided_at=None,
            )
            conn.execute(
                "INSERT INTO plans (sha256, class_name, source, status, researcher, requested_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    record.sha256,
                    record.class_name,
                    record.source,
                    record.status,
                    record.researcher,
                    record.requested_at,
                ),
            )
        return record

    def approve(self, id_or_hash_prefix: str, reason: str = "") -> PlanRecord:
        """Allow a plan to run on this node; returns the updated record."""
        return self._decide(id_or_hash_prefix, "approved", reason)

    def reject(self, id_or_hash_prefix: str, reason: str = "") -> PlanRecord:
        """Forbid a plan on this node; ``reason`` is told to researchers whose tasks it refuses."""
        return self._decide(id_or_hash_prefix, "rejected", reason)

    def _decide(self, id_or_hash_prefix: str, status: PlanStatus, reason: str) -> PlanRecord:
        reason_text = reason.strip() or None
        with connect_database(self.db_path, write=True) as conn:
            record = self._find(conn, id_or_hash_prefix)
            decided_at = utc_now()
            conn.execute(
                "UPDATE plans SET status = ?, decided_at = ?, reason = ? WHERE sha256 = ?",
                (status, decided_at, reason_text, record.sha256),
            )
        return PlanRecord(
            **{**asdict(record), "status": status, "decided_at": decided_at, "reason": reason_text}
        )

    def last_approved(self, plan: PlanRecord) -> PlanRecord | None:
        """The most recently approved other plan with ``plan``'s class name and researcher.

        What an operator compares a new plan against: usually the previous version of it.
        """
        with connect_database(self.db_path) as conn:
            row = conn.execute(
                "SELECT * FROM plans WHERE status = 'approved' AND class_name = ? AND researcher = ?"
                " AND sha256 != ? ORDER BY decided_at DESC, rowid DESC LIMIT 1",
                (plan.class_name, plan.researcher, plan.sha256),
            ).fetchone()
        return None if row is None else _record(row)

    def get(self, id_or_hash_prefix: str) -> PlanRecord:
        """The plan whose hash starts with this id or prefix (``PlanError`` if none or several)."""
        with connect_database(self.db_path) as conn:
            return self._find(conn, id_or_hash_prefix)

    def list(self, status: PlanStatus | None = None) -> list[PlanRecord]:
        """Known plans, oldest request first, optionally only those with ``status``."""
        where, params = ("WHERE status = ?", (status,)) if status else ("", ())
        with connect_database(self.db_path) as conn:
            rows = conn.execute(
                # rowid is insertion order: exact even for requests within the same second.
                f"SELECT * FROM plans {where} ORDER BY rowid",
                params,
            ).fetchall()
        return [_record(row) for row in rows]

    @staticmethod
    def _find(conn: sqlite3.Connection, id_or_hash_prefix: str) -> PlanRecord:
        prefix = id_or_hash_prefix.strip().lower()
        if not _HEX.fullmatch(prefix) or len(prefix) < MIN_PREFIX_LENGTH or len(prefix) > 64:
            raise PlanError(
                f"{id_or_hash_prefix!r} is not a plan id: give the {PLAN_ID_LENGTH}-digit id "
                f"(or at least {MIN_PREFIX_LENGTH} hex digits of the hash) shown by "
                "`fedloom node plan list`"
            )
        rows: Sequence[sqlite3.Row] = conn.execute(
            # The prefix is hex only (checked above), so no LIKE wildcard can slip in.
            "SELECT * FROM plans WHERE sha256 LIKE ? ORDER BY sha256 LIMIT 6",
            (prefix + "%",),
        ).fetchall()
        if not rows:
            raise PlanError(
                f"no training plan with id {prefix} on this node: `fedloom node plan list` "
                "shows the known ones"
            )
        if len(rows) > 1:
            ids = ", ".join(row["sha256"][: PLAN_ID_LENGTH + 4] for row in rows[:5])
            raise PlanError(f"plan id {prefix} is ambiguous (matches {ids}): give more digits")
        return _record(rows[0])
