"""Open node-database connections kept between transactions, in the daemon only.

Opening a connection, setting it up and closing it costs more than the small transactions
the daemon runs around every task: closing the last connection to a WAL database also
checkpoints the log into the database and deletes it, so each write paid 1.3-1.9 ms where
the same write on an open connection takes 0.02 ms (and a read 0.2 against 0.004 ms).
The daemon runs about eight of them per task. Short-lived commands (the CLI, tests) keep
opening and closing: their database file on disk is then always complete and checkpointed.

A connection is kept per thread (sqlite3 connections belong to the thread that opened
them) and per database file; it is dropped and reopened when the file at that path is no
longer the one it opened (replaced or restored), in a forked child, and after any error.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

__all__ = ["acquire", "discard", "keep_connections_open"]

#: Database files a thread keeps connections to (the daemon uses one).
MAX_KEPT_PER_THREAD = 4

_keeping = False
_local = threading.local()
#: Connections a forked child found in its parent's cache: never used, never closed.
_inherited: list[sqlite3.Connection] = []

#: A kept connection and the (device, inode, pid) it was opened for.
_Kept = tuple[sqlite3.Connection, tuple[int, int, int]]


def keep_connections_open() -> None:
    """From now on, connections of this process stay open between transactions."""
    global _keeping
    _keeping = True


def _identity(path: Path) -> tuple[int, int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_dev, stat.st_ino, os.getpid())


def acquire(
    path: Path, open_connection: Callable[[Path], sqlite3.Connection]
) -> tuple[sqlite3.Connection, bool]:
    """A connection to `path` and whether it is kept (the caller must then not close it)."""
    if not _keeping:
        return open_connection(path), False
    kept: dict[str, _Kept] = _local.__dict__.setdefault("kept", {})
    key = str(path)
    identity = _identity(path)
    entry = kept.pop(key, None)
    if entry is not None:
        connection, opened_for = entry
        if connection.in_transaction:
            # A block inside another block on the same thread: it gets its own connection,
            # as before (the outer one's transaction must not be joined or restarted).
            kept[key] = entry
            return open_connection(path), False
        if identity is not None and opened_for == identity:
            kept[key] = entry  # most recently used last
            return connection, True
        if opened_for[2] == os.getpid():
            connection.close()
        else:  # a forked child must not close its parent's connection, even by collecting it
            _inherited.append(connection)
    connection = open_connection(path)
    identity = _identity(path)
    if identity is None:
        return connection, False
    kept[key] = (connection, identity)
    while len(kept) > MAX_KEPT_PER_THREAD:
        oldest = next(iter(kept))
        old_connection, _ = kept.pop(oldest)
        old_connection.close()
    return connection, True


def discard(path: Path) -> None:
    """Close and forget this thread's kept connection to `path` (after an error)."""
    kept: dict[str, _Kept] = _local.__dict__.get("kept", {})
    entry = kept.pop(str(path), None)
    if entry is None:
        return
    if entry[1][2] == os.getpid():
        entry[0].close()
    else:
        _inherited.append(entry[0])
