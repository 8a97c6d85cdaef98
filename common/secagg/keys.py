"""A node's long-term X25519 key pair for SecAgg, kept in its home directory.

The private key is created once (file mode 0600, never rewritten) and loaded afterwards;
only the raw 32-byte public key leaves the node, relayed by the researcher to peers.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from common.errors import SecaggError

__all__ = [
    "PRIVATE_KEY_FILE",
    "PUBLIC_KEY_SIZE",
    "SecaggKeyPair",
    "load_or_create_keypair",
    "public_key_fingerprint",
    "public_key_from_bytes",
]

logger = logging.getLogger(__name__)

# File name of the PEM (PKCS#8) private key inside the node home.
PRIVATE_KEY_FILE = "secagg_x25519.pem"
# Raw X25519 public keys are 32 bytes (RFC 7748).
PUBLIC_KEY_SIZE = 32
# Owner read/write only, like an SSH private key.
_PRIVATE_MODE = 0o600
# Hex digits of the SHA-256 fingerprint operators compare out of band.
_FINGERPRINT_CHARS = 32


@dataclass(frozen=True)
class SecaggKeyPair:
    """An X25519 key pair; ``private_key`` feeds :func:`common.secagg.kdf.agree`."""

    private_key: X25519PrivateKey

    def public_bytes(self) -> bytes:
        """The raw 32-byte public key, as sent in ``Hello.secagg_public_key``."""
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def fingerprint(self) -> str:
        """A short SHA-256 fingerprint of the public key, for out-of-band comparison."""
        return public_key_fingerprint(self.public_bytes())

    @classmethod
    def generate(cls) -> SecaggKeyPair:
        """A fresh key pair held in memory only (tests, benchmarks)."""
        return cls(X25519PrivateKey.generate())


def public_key_fingerprint(public_key: bytes) -> str:
    """SHA-256 fingerprint (hex prefix) of a raw public key."""
    return hashlib.sha256(public_key).hexdigest()[:_FINGERPRINT_CHARS]


def public_key_from_bytes(data: bytes, *, node_id: str) -> X25519PublicKey:
    """Parse a peer's raw public key, raising SecaggError naming the peer if it is malformed."""
    if len(data) != PUBLIC_KEY_SIZE:
        raise SecaggError(
            f"node {node_id!r} announced a SecAgg public key of {len(data)} bytes, expected "
            f"{PUBLIC_KEY_SIZE}: that node must re-run `fedloom node init` or upgrade."
        )
    return X25519PublicKey.from_public_bytes(bytes(data))


def load_or_create_keypair(directory: Path) -> SecaggKeyPair:
    """Load the key pair stored in ``directory``, creating it (and the directory) on first use."""
    directory = Path(directory)
    path = directory / PRIVATE_KEY_FILE
    if path.exists():
        return _load(path)
    directory.mkdir(parents=True, exist_ok=True)
    keys = SecaggKeyPair.generate()
    pem = keys.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    tmp = directory / f".{PRIVATE_KEY_FILE}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _PRIVATE_MODE)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        # link() fails if another process created the key meanwhile: keep theirs.
        os.link(tmp, path)
    except FileExistsError:
        logger.info("SecAgg key %s was created concurrently; loading it", path)
        return _load(path)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("created SecAgg key pair %s (fingerprint %s)", path, keys.fingerprint())
    return keys


def _load(path: Path) -> SecaggKeyPair:
    """Read and check a private key file written by :func:`load_or_create_keypair`."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise SecaggError(
            f"SecAgg private key {path} is readable by other users (mode {mode:o}): "
            f"run `chmod 600 {path}`."
        )
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except ValueError as err:
        raise SecaggError(
            f"SecAgg private key {path} is unreadable ({err}): delete it to create a new one; "
            "peers pick up the new public key at the next round."
        ) from err
    if not isinstance(key, X25519PrivateKey):
        raise SecaggError(
            f"SecAgg private key {path} holds a {type(key).__name__}, not an X25519 key: "
            "delete it to create a new one."
        )
    return SecaggKeyPair(key)
