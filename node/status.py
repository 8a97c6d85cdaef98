"""What the running daemon publishes about itself for the operator's console.

One row per node home in ``daemon_status``: the daemon's pid, the researcher it dials,
whether the connection is up, the task it runs. The daemon writes it on every change
(a handful of times per task, so SQLite is plenty); the console reads it and checks
that the pid is still alive, since a killed daemon cannot say it stopped.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from node.home import connect_database, utc_now

__all__ = ["DaemonStatus", "StatusBoard"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS daemon_status (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    state      TEXT NOT NULL,   -- JSON of DaemonStatus
    updated_at TEXT NOT NULL
)
"""


@dataclass(frozen=True)
class DaemonStatus:
    """The daemon's latest report about itself (times are ISO-8601 UTC)."""

    pid: int
    started_at: str
    researcher_address: str
    tls: bool
    cert_path: str | None = None
    containment: str = ""
    connected: bool = False
    researcher_id: str | None = None
    connected_since: str | None = None
    current_task: str | None = None
    current_experiment: str | None = None
    stopped_at: str | None = None

    @property
    def running(self) -> bool:
        """True when the daemon has not said it stopped and its process still exists."""
        if self.stopped_at is not None:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # alive, owned by another user
            return True
        return True


class StatusBoard:
    """Reads and writes the daemon's status row in the node database."""

    def __init__(self, db_path: Path | str) -> None:
        self.db_path = Path(db_path)
        with connect_database(self.db_path, write=True) as conn:
            conn.execute(_SCHEMA)

    def publish(self, status: DaemonStatus) -> DaemonStatus:
        """Replace the published status with ``status`` and return it."""
        with connect_database(self.db_path, write=True) as conn:
            conn.execute(
                "INSERT INTO daemon_status (id, state, updated_at) VALUES (1, ?, ?)"
                " ON CONFLICT(id) DO UPDATE SET state = excluded.state,"
                " updated_at = excluded.updated_at",
                (json.dumps(asdict(status)), utc_now()),
            )
        return status

    def update(self, status: DaemonStatus, **changes: Any) -> DaemonStatus:
        """Publish ``status`` with ``changes`` applied and return the new status."""
        return self.publish(replace(status, **changes))

    def read(self) -> DaemonStatus | None:
        """The last published status, ``None`` when no daemon ever ran on this home."""
        with connect_database(self.db_path) as conn:
            row = conn.execute("SELECT state FROM daemon_status WHERE id = 1").fetchone()
        if row is None:
            return None
        return DaemonStatus(**json.loads(row["state"]))
