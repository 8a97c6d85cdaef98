"""The console's login secret: generated once, shown once, stored only as a salted scrypt hash.

It lives in the node database (``console_password``), so ``node init``, the console and
``console --reset-password`` all see the same one. The secret is random (not chosen by a
person), so scrypt's cost guards against an offline guess only as a second line of defence;
the parameters below still follow the scrypt paper's interactive-login setting.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
from pathlib import Path

from node.home import connect_database, utc_now

__all__ = [
    "check_password",
    "ensure_password",
    "has_password",
    "password_generation",
    "reset_password",
]

#: scrypt cost (N=2^14, r=8, p=1: ~16 MiB and ~50 ms per check, the paper's interactive
#: login setting), salt and digest lengths.
SCRYPT_N = 1 << 14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
DIGEST_BYTES = 32
#: Bytes of randomness in a generated secret: 128 bits, shown as 22 URL-safe characters.
SECRET_BYTES = 16

_SCHEMA = """
CREATE TABLE IF NOT EXISTS console_password (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    salt       BLOB NOT NULL,
    digest     BLOB NOT NULL,
    n          INTEGER NOT NULL,
    r          INTEGER NOT NULL,
    p          INTEGER NOT NULL,
    created_at TEXT NOT NULL
)
"""


def _digest(secret: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        secret.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=DIGEST_BYTES, maxmem=64 << 20
    )


def _store(db_path: Path, secret: str, *, replace: bool) -> bool:
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _digest(secret, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
    with connect_database(db_path, write=True) as conn:
        conn.execute(_SCHEMA)
        cursor = conn.execute(
            f"{verb} INTO console_password (id, salt, digest, n, r, p, created_at)"
            " VALUES (1, ?, ?, ?, ?, ?, ?)",
            (salt, digest, SCRYPT_N, SCRYPT_R, SCRYPT_P, utc_now()),
        )
        return cursor.rowcount == 1


def has_password(db_path: Path) -> bool:
    """True when a console secret has been set on this home."""
    with connect_database(db_path, write=True) as conn:
        conn.execute(_SCHEMA)
        return conn.execute("SELECT 1 FROM console_password").fetchone() is not None


def ensure_password(db_path: Path) -> str | None:
    """Create a secret when the home has none and return it (to show once); else ``None``."""
    secret = secrets.token_urlsafe(SECRET_BYTES)
    return secret if _store(db_path, secret, replace=False) else None


def reset_password(db_path: Path) -> str:
    """Replace the secret with a new random one and return it (to show once)."""
    secret = secrets.token_urlsafe(SECRET_BYTES)
    _store(db_path, secret, replace=True)
    return secret


def check_password(db_path: Path, secret: str) -> bool:
    """True when ``secret`` is the console secret (constant-time comparison)."""
    with connect_database(db_path, write=True) as conn:
        conn.execute(_SCHEMA)
        row = conn.execute("SELECT * FROM console_password WHERE id = 1").fetchone()
    if row is None:
        return False
    actual = _digest(secret, bytes(row["salt"]), row["n"], row["r"], row["p"])
    return hmac.compare_digest(actual, bytes(row["digest"]))


def password_generation(db_path: Path) -> str | None:
    """A value that changes whenever the secret is replaced (``None`` when there is none).

    Sessions remember it at login, so a reset ends the sessions opened with the old secret.
    """
    with connect_database(db_path) as conn:
        try:
            row = conn.execute("SELECT salt FROM console_password WHERE id = 1").fetchone()
        except sqlite3.OperationalError:  # no table yet: no secret was ever set
            return None
    return None if row is None else bytes(row["salt"]).hex()
