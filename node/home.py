"""The node home directory: its layout, its config file and its SQLite database.

Layout of a home (``fedloom node --home DIR init`` creates it)::

    DIR/config.toml   node id, name, creation time, default researcher address
    DIR/keys/         the SecAgg X25519 key pair (common.secagg.keys)
    DIR/node.db       SQLite registry of datasets and training plans (WAL mode)
    DIR/logs/         daemon logs
    DIR/state/        per-experiment optimizer state
    DIR/daemon.lock   held (flock) by the daemon serving this home, naming its pid

``init`` builds the whole tree in a hidden staging directory next to DIR and
renames it into place, so a crash half-way never leaves a half-made home that
a second ``init`` would then refuse.
"""

from __future__ import annotations

import copy
import logging
import os
import secrets
import shutil
import sqlite3
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import tomli_w

from common.constants import DEFAULT_PORT
from common.errors import NodeHomeError
from node import db_connections

__all__ = [
    "DEFAULT_HOME",
    "HOME_ENV_VAR",
    "SCHEMA_VERSION",
    "NodeHome",
    "connect_database",
    "create_tables",
    "utc_now",
]

logger = logging.getLogger(__name__)

#: Home used when neither ``--home`` nor the environment variable names one.
DEFAULT_HOME = Path("fedloom-node")
#: Environment variable naming the node home (lets a container set it once).
HOME_ENV_VAR = "FEDLOOM_NODE_HOME"

CONFIG_FILE = "config.toml"
DB_FILE = "node.db"
KEYS_DIR = "keys"
LOGS_DIR = "logs"
STATE_DIR = "state"

#: Version of the node database layout, stored in SQLite's ``user_version``. A database
#: written by a newer fedloom is refused rather than silently misread.
SCHEMA_VERSION = 1

#: Seconds a connection waits for another process's write lock (daemon and CLI share
#: node.db). Every write here is a handful of rows, so 30 s only runs out when another
#: process is stuck, and then an error naming the database is the right answer.
BUSY_TIMEOUT_SECONDS = 30.0

#: Hex digits of randomness in a node id ``node-<hex>``: 48 bits make a collision among
#: the few hundred nodes of a federation negligible while keeping ids readable in logs.
NODE_ID_HEX_DIGITS = 12

#: Owner-only permissions for the home and its key directory: they hold a private key
#: and the list of approved code.
PRIVATE_DIR_MODE = 0o700


def utc_now() -> str:
    """The current time as ISO-8601 UTC with second precision, e.g. ``2025-01-31T12:00:00Z``."""
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _open_connection(db_path: Path) -> sqlite3.Connection:
    """Connect with fedloom's settings, checking the schema version and the WAL journal."""
    try:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a transaction spans
        # exactly the block of connect_database and nothing is committed implicitly.
        conn = sqlite3.connect(db_path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
    except sqlite3.Error as exc:
        raise _database_error(db_path, exc) from exc
    try:
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA foreign_keys = ON")
        # FULL syncs the WAL on every commit: a registered dataset, an approval or a privacy
        # budget spent survives a power cut. Those writes are rare, so the cost does not
        # matter; the served-task rows written around every task opt out (durable=False).
        conn.execute("PRAGMA synchronous = FULL")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise NodeHomeError(
                f"node database {db_path} has schema version {version}, newer than this "
                f"fedloom understands ({SCHEMA_VERSION}): upgrade fedloom on this node"
            )
        # WAL lets the CLI write while the daemon reads, and survives a crash mid-write.
        # The mode is stored in the file, so this is a no-op after the first time.
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise NodeHomeError(
                f"node database {db_path} cannot use WAL journaling (got {mode!r}): keep the "
                "node home on a local file system, not a network share"
            )
        if version < SCHEMA_VERSION:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except sqlite3.Error as exc:
        conn.close()
        raise _database_error(db_path, exc) from exc
    except BaseException:
        conn.close()
        raise
    return conn


def _database_error(db_path: Path, exc: sqlite3.Error) -> NodeHomeError:
    text = str(exc)
    if "locked" in text or "busy" in text:
        return NodeHomeError(
            f"node database {db_path} stayed locked for {BUSY_TIMEOUT_SECONDS:.0f} s by another "
            "process: retry, or stop the process holding it"
        )
    return NodeHomeError(
        f"node database {db_path} cannot be used ({text}): check the file's permissions and "
        "free disk space, or restore the home from a backup"
    )


@contextmanager
def connect_database(
    db_path: Path | str, *, write: bool = False, durable: bool = True
) -> Iterator[sqlite3.Connection]:
    """One transaction on the node database: committed when the block ends, rolled back on error.

    Creates the database file when missing. ``write=True`` takes the write lock up front
    (``BEGIN IMMEDIATE``), so a check and the write that depends on it (a unique name, a
    status change) cannot interleave with another process. ``durable=False`` commits without
    flushing the journal to disk (SQLite's ``synchronous = NORMAL``): the commit survives the
    process dying, and the next durable commit flushes it, but a power cut may lose it; only
    for bookkeeping that a task waits on. sqlite3 errors come out as ``NodeHomeError`` naming
    the database.
    """
    path = Path(db_path)
    conn, kept = db_connections.acquire(path, _open_connection)
    try:
        if kept or not durable:  # a kept connection may come from a non-durable block
            conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        yield conn
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        _roll_back(conn)
        if kept:
            db_connections.discard(path)
        raise _database_error(path, exc) from exc
    except BaseException:
        _roll_back(conn)
        raise
    finally:
        if not kept:
            conn.close()


def _roll_back(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def create_tables(db_path: Path | str, schema: str) -> None:
    """Run ``schema`` (``CREATE ... IF NOT EXISTS`` statements separated by ``;``) in one transaction."""
    with connect_database(db_path, write=True) as conn:
        # One statement at a time: executescript would COMMIT our transaction first.
        for statement in schema.split(";"):
            if statement.strip():
                conn.execute(statement)


class NodeHome:
    """A node's home directory; ``NodeHome.open(path)`` for an existing one, ``init`` to create it."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path).expanduser().absolute()
        self._config: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"NodeHome({str(self.path)!r})"

    @classmethod
    def open(cls, path: Path | str) -> NodeHome:
        """Load an initialised home; ``NodeHomeError`` naming the ``init`` command when missing."""
        home = cls(path)
        home._load()
        return home

    def init(self, name: str | None = None, node_id: str | None = None) -> NodeHome:
        """Create the home (config, keys, database, logs, state) and return it, loaded.

        `node_id` defaults to a fresh random id; pass the id a TLS certificate was issued
        to. Refuses a path that is already a node home or a non-empty directory, so an
        existing node id, key pair or registry is never overwritten.
        """
        if node_id is not None:
            from common.tls import validate_node_id

            validate_node_id(node_id)
        if (self.path / CONFIG_FILE).exists():
            raise NodeHomeError(
                f"{self.path} is already a fedloom node home (node "
                f"{self._peek_node_id()}); use it as is, or pass another --home to create a new one"
            )
        if self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
            raise NodeHomeError(
                f"{self.path} exists and is not an empty directory: pass a new or empty "
                "directory as --home"
            )
        if name is not None and not name.strip():
            raise NodeHomeError("the node name is empty: pass --name with some text, or omit it")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        staging = self.path.parent / f".{self.path.name}.init-{secrets.token_hex(4)}"
        try:
            staging.mkdir(mode=PRIVATE_DIR_MODE)
            self._populate(staging, name, node_id)
            try:
                if self.path.exists():
                    self.path.rmdir()  # empty, checked above
                os.replace(staging, self.path)
            except OSError as exc:
                raise NodeHomeError(
                    f"{self.path} was filled by another process during init ({exc.strerror}): "
                    "check what is in it before trying again"
                ) from exc
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self._config = None
        self._load()
        logger.info("initialised node home %s as %s", self.path, self.node_id)
        return self

    def _populate(self, root: Path, name: str | None, node_id: str | None) -> None:
        # Imported here: the SecAgg package is only needed when a home is created.
        from common.secagg.keys import load_or_create_keypair

        node_id = node_id or f"node-{secrets.token_hex(NODE_ID_HEX_DIGITS // 2)}"
        for sub in (LOGS_DIR, STATE_DIR):
            (root / sub).mkdir()
        (root / KEYS_DIR).mkdir(mode=PRIVATE_DIR_MODE)
        load_or_create_keypair(root / KEYS_DIR)
        _open_connection(root / DB_FILE).close()
        config = {
            "node": {
                "id": node_id,
                "name": name.strip() if name is not None else node_id,
                "created_at": utc_now(),
            },
            "researcher": {"address": f"localhost:{DEFAULT_PORT}"},
        }
        # Written last: a config file is what marks a directory as a complete home.
        with open(root / CONFIG_FILE, "wb") as fh:
            tomli_w.dump(config, fh)
            fh.flush()
            os.fsync(fh.fileno())

    def _peek_node_id(self) -> str:
        try:
            return str(self._read_config()["node"]["id"])
        except (NodeHomeError, KeyError, TypeError):
            return "of unknown id"

    def _read_config(self) -> dict[str, Any]:
        config_path = self.path / CONFIG_FILE
        try:
            with open(config_path, "rb") as fh:
                return tomllib.load(fh)
        except FileNotFoundError:
            raise NodeHomeError(
                f"no fedloom node home at {self.path}: create it with "
                f"`fedloom node --home {self.path} init`"
            ) from None
        except (tomllib.TOMLDecodeError, OSError) as exc:
            raise NodeHomeError(
                f"{config_path} cannot be read ({exc}): fix or restore the file"
            ) from exc

    def _load(self) -> dict[str, Any]:
        if self._config is not None:
            return self._config
        if not self.path.is_dir():
            raise NodeHomeError(
                f"no fedloom node home at {self.path}: create it with "
                f"`fedloom node --home {self.path} init`"
            )
        config = self._read_config()
        node = config.get("node")
        if not isinstance(node, dict) or not all(
            isinstance(node.get(key), str) for key in ("id", "name", "created_at")
        ):
            raise NodeHomeError(
                f"{self.path / CONFIG_FILE} lacks a [node] table with id, name and created_at: "
                "restore the file from a backup"
            )
        if not (self.path / DB_FILE).is_file():
            raise NodeHomeError(
                f"node home {self.path} has no database {DB_FILE}: restore it from a backup "
                "(a new `init` in another directory starts an empty registry)"
            )
        for sub in (LOGS_DIR, STATE_DIR):
            (self.path / sub).mkdir(exist_ok=True)
        self._config = config
        return config

    @property
    def config(self) -> dict[str, Any]:
        """The parsed ``config.toml`` (a copy: edit the file, not this dict)."""
        return copy.deepcopy(self._load())

    @property
    def node_id(self) -> str:
        """The node's id, ``node-<12 hex>``, fixed at ``init``."""
        return str(self._load()["node"]["id"])

    @property
    def name(self) -> str:
        """The operator-chosen node name (the node id when none was given)."""
        return str(self._load()["node"]["name"])

    @property
    def researcher_address(self) -> str:
        """Default ``HOST:PORT`` of the researcher, used by ``start`` without ``--researcher``."""
        researcher = self._load().get("researcher", {})
        address = researcher.get("address") if isinstance(researcher, dict) else None
        return str(address) if address else f"localhost:{DEFAULT_PORT}"

    @property
    def db_path(self) -> Path:
        """Path of the SQLite registry of datasets and plans."""
        self._load()
        return self.path / DB_FILE

    @property
    def keys_dir(self) -> Path:
        """Directory of the SecAgg key pair."""
        self._load()
        return self.path / KEYS_DIR

    @property
    def logs_dir(self) -> Path:
        """Directory of the daemon's logs."""
        self._load()
        return self.path / LOGS_DIR

    @property
    def state_dir(self) -> Path:
        """Directory of per-experiment optimizer state."""
        self._load()
        return self.path / STATE_DIR
