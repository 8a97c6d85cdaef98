"""The daemon keeps its node-database connections open between transactions, safely."""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from common.errors import NodeHomeError
from node import db_connections
from node.home import connect_database


@pytest.fixture
def keeping(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Connections kept, as in the daemon, for this test only."""
    monkeypatch.setattr(db_connections, "_keeping", True)
    yield
    for connection, _ in db_connections._local.__dict__.pop("kept", {}).values():
        connection.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "node.db"
    with connect_database(path, write=True) as conn:
        conn.execute("CREATE TABLE items (name TEXT)")
    return path


def _mark_connection(path: Path) -> None:
    with connect_database(path, write=True) as conn:
        conn.execute("CREATE TEMP TABLE marker (x)")  # lives and dies with its connection


def _same_connection(path: Path) -> bool:
    with connect_database(path) as conn:
        found = conn.execute("SELECT name FROM temp.sqlite_master WHERE name = 'marker'")
        return found.fetchone() is not None


def _names(path: Path) -> list[str]:
    with connect_database(path) as conn:
        return [row["name"] for row in conn.execute("SELECT name FROM items ORDER BY name")]


def test_without_keeping_each_transaction_opens_its_own_connection(db: Path) -> None:
    _mark_connection(db)

    assert not _same_connection(db)


def test_a_kept_connection_serves_the_next_transaction_and_sees_other_writers(
    db: Path, keeping: None
) -> None:
    _mark_connection(db)
    # Another process (the CLI, say) writes meanwhile.
    with closing(sqlite3.connect(db, isolation_level=None)) as other:
        other.execute("INSERT INTO items VALUES ('from the cli')")

    assert _same_connection(db)
    assert _names(db) == ["from the cli"]


def test_a_database_file_replaced_at_its_path_is_reopened(db: Path, keeping: None) -> None:
    with connect_database(db, write=True) as conn:
        conn.execute("INSERT INTO items VALUES ('old')")
    backup = db.with_name("backup.db")
    with closing(sqlite3.connect(db)) as source, closing(sqlite3.connect(backup)) as copy:
        source.backup(copy)
        copy.execute("INSERT INTO items VALUES ('restored')")
        copy.commit()
    _mark_connection(db)

    for suffix in ("", "-wal", "-shm"):  # an operator restores the backup in place
        db.with_name(db.name + suffix).unlink(missing_ok=True)
    shutil.copy(backup, db)

    assert not _same_connection(db)
    assert _names(db) == ["old", "restored"]


def test_after_an_error_the_next_transaction_gets_a_fresh_connection(
    db: Path, keeping: None
) -> None:
    _mark_connection(db)
    with pytest.raises(NodeHomeError, match=r"node\.db"), connect_database(db, write=True) as conn:
        conn.execute("INSERT INTO items VALUES ('lost')")
        conn.execute("INSERT INTO no_such_table VALUES (1)")

    assert not _same_connection(db)
    assert _names(db) == []  # the failed block was rolled back whole


def test_a_durable_block_syncs_fully_after_a_non_durable_one(db: Path, keeping: None) -> None:
    with connect_database(db, write=True, durable=False) as conn:
        relaxed = conn.execute("PRAGMA synchronous").fetchone()[0]
    with connect_database(db, write=True) as conn:
        full = conn.execute("PRAGMA synchronous").fetchone()[0]

    assert (relaxed, full) == (1, 2)  # NORMAL, then FULL on the same kept connection


def test_a_forked_child_opens_its_own_connection(db: Path, keeping: None) -> None:
    _mark_connection(db)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = 0 if not _same_connection(db) and _names(db) == [] else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)

    assert os.waitstatus_to_exitcode(status) == 0
    assert _same_connection(db)  # the parent's connection survived the child


def test_a_block_inside_another_gets_its_own_connection(db: Path, keeping: None) -> None:
    _mark_connection(db)
    with connect_database(db) as outer:
        outer.execute("SELECT count(*) FROM items").fetchone()
        inner_sees_marker = _same_connection(db)  # would BEGIN inside the outer transaction
        outer.execute("SELECT count(*) FROM items").fetchone()

    assert not inner_sees_marker
    assert _same_connection(db)  # the kept connection serves again once the outer ended
