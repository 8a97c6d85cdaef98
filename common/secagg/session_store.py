"""A node's per-session SecAgg state on disk: round keys, shares, what it masked and revealed.

One JSON file per session (owner-only, written atomically) in a directory of the node home,
so that the phases, which run in the daemon (keys, shares, unmasking) and in a training
process (masking), see one state, and the once-per-session rules survive a restart.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from common.errors import SecaggError

__all__ = ["MAX_SESSIONS", "SessionStore"]

# Sessions kept before the oldest files are deleted: a day of one round a minute. A forgotten
# session answers nothing (its keys are gone), and session ids are never reused.
MAX_SESSIONS = 2_000
_PRIVATE_MODE = 0o600
_FORMAT_VERSION = 1


class SessionStore:
    """Load and save session states (plain dicts) by session id."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def _path(self, session_id: str) -> Path:
        return self.directory / f"{hashlib.sha256(session_id.encode()).hexdigest()[:32]}.json"

    def load(self, session_id: str) -> dict[str, Any] | None:
        """The state of ``session_id``, or None if this node never took part in it."""
        path = self._path(session_id)
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text())
            if data.get("version") != _FORMAT_VERSION or data.get("session_id") != session_id:
                raise ValueError("unexpected format or session")
        except (OSError, ValueError) as err:
            raise SecaggError(
                f"SecAgg session file {path} is unreadable ({err}); the round cannot continue "
                "on this node and must be run again."
            ) from err
        return dict(data)

    def require(self, session_id: str) -> dict[str, Any]:
        """The state of ``session_id``; SecaggError if this node has none."""
        state = self.load(session_id)
        if state is None:
            raise SecaggError(
                f"this node has no SecAgg session {session_id!r}: it never advertised keys for "
                "it (or forgot it). The researcher must start the round again."
            )
        return state

    def save(self, state: dict[str, Any]) -> None:
        """Write a state atomically, owner-readable only (it holds secret keys)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        state["version"] = _FORMAT_VERSION
        path = self._path(str(state["session_id"]))
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _PRIVATE_MODE)
        with os.fdopen(fd, "w") as handle:
            json.dump(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)

    def prune(self) -> None:
        """Delete the oldest session files beyond :data:`MAX_SESSIONS`."""
        if not self.directory.is_dir():
            return
        files = sorted(self.directory.glob("*.json"), key=lambda p: p.stat().st_mtime)
        for old in files[:-MAX_SESSIONS]:
            old.unlink(missing_ok=True)
