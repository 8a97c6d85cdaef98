"""A node's memory of what it masked and which dropouts it accepted, per SecAgg session.

It enforces the node-side rules of the threat model (see ``common.secagg``): a payload is
masked at most once per session (a second masking under the same seeds would reveal the
difference of the two inputs), and a node accepts one dropped set per session (answering
several would reveal individual pairwise masks). Kept in memory, or in a JSON file in the
node home so the rules survive a restart of the node daemon.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from common.errors import SecaggError

__all__ = ["LEDGER_FILE", "MAX_LEDGER_SESSIONS", "CorrectionLedger"]

logger = logging.getLogger(__name__)

# Default file name inside the node home.
LEDGER_FILE = "secagg_ledger.json"
# Sessions remembered before the oldest are forgotten: over a day of one round a minute, and
# ~200 KB of JSON rewritten in about a millisecond per masked payload. Forgotten sessions are refused corrections (nothing recorded), and
# session ids carry a random nonce, so an honest researcher never reuses one.
MAX_LEDGER_SESSIONS = 2_000
_FORMAT_VERSION = 1


class CorrectionLedger:
    """Per-session record of masked payload shapes and of the one accepted dropped set.

    One ledger per node home, shared by every :class:`NodeMasker` of that node; not
    thread-safe, and one process at a time may use a ledger file.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = None if path is None else Path(path)
        self._sessions: dict[str, dict[str, Any]] = {}
        if self.path is not None and self.path.exists():
            self._sessions = _read(self.path)

    def record_masked(self, session_id: str, name: str, shape: tuple[int, ...]) -> None:
        """Note that payload ``name`` was masked; refuse masking it a second time."""
        session = self._sessions.setdefault(session_id, {"payloads": {}, "dropped": None})
        if session["dropped"] is not None:
            raise SecaggError(
                f"SecAgg session {session_id!r} already answered a dropout correction; refusing "
                f"to mask payload {name!r} in it. The researcher must start a new session."
            )
        if name in session["payloads"]:
            raise SecaggError(
                f"payload {name!r} was already masked in SecAgg session {session_id!r}; masking "
                "it again would reuse the masks and reveal the difference of the two updates. "
                "Resend the first masked array, or start a new session (new round attempt)."
            )
        session["payloads"][name] = [int(n) for n in shape]
        self._prune()
        self._save()

    def masked_shape(self, session_id: str, name: str) -> tuple[int, ...]:
        """The shape of what this node masked for ``name``; SecaggError if it never did."""
        shape = self._sessions.get(session_id, {}).get("payloads", {}).get(name)
        if shape is None:
            raise SecaggError(
                f"this node never masked payload {name!r} in SecAgg session {session_id!r}, "
                "so it has no correction to give for it."
            )
        return tuple(int(n) for n in shape)

    def accept_dropped(self, session_id: str, dropped: Iterable[str]) -> None:
        """Accept the session's dropped set; refuse any different set afterwards."""
        wanted = sorted(set(dropped))
        session = self._sessions.get(session_id)
        if session is None:
            raise SecaggError(
                f"this node masked nothing in SecAgg session {session_id!r}; refusing a "
                "dropout correction for it."
            )
        if session["dropped"] is None:
            session["dropped"] = wanted
            self._save()
            logger.info("SecAgg session %s: accepted dropped peers %s", session_id, wanted)
            return
        if session["dropped"] != wanted:
            raise SecaggError(
                f"SecAgg session {session_id!r}: the researcher first reported peers "
                f"{session['dropped']} as dropped, now {wanted}; refusing, since answering "
                "both would reveal individual masks. Discard this round."
            )

    def _prune(self) -> None:
        while len(self._sessions) > MAX_LEDGER_SESSIONS:
            del self._sessions[next(iter(self._sessions))]

    def _save(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"version": _FORMAT_VERSION, "sessions": self._sessions}))
        os.replace(tmp, self.path)


def _read(path: Path) -> dict[str, dict[str, Any]]:
    """Load a ledger file, raising SecaggError naming it when it is unreadable."""
    try:
        data = json.loads(path.read_text())
        if data.get("version") != _FORMAT_VERSION or not isinstance(data.get("sessions"), dict):
            raise ValueError(f"unsupported format {data.get('version')!r}")
        return dict(data["sessions"])
    except (OSError, ValueError, AttributeError) as err:
        raise SecaggError(
            f"SecAgg ledger {path} is unreadable ({err}). Stop the node, make sure no round "
            "is in progress, then delete the file."
        ) from err
