"""Pairwise mask seeds: X25519 agreement, then HKDF-SHA256 bound to session, payload and pair.

Every seed is derived from the pair's shared secret with an ``info`` string that names the
session (experiment, round and a per-attempt nonce), the payload and the ordered pair of node
ids and public keys, so two masks are equal only if all of these are equal.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from common.errors import SecaggError
from common.secagg.keys import SecaggKeyPair, public_key_from_bytes

__all__ = [
    "SEED_SIZE",
    "PairSecret",
    "agree",
    "length_prefixed",
    "mask_seed",
    "new_session_id",
    "self_mask_seed",
]

# AES-128 key size: the keystream cipher (see masking.py) takes a 16-byte key, which matches
# the ~128-bit security level of X25519.
SEED_SIZE = 16
# Domain separation: a seed derived for masks can never collide with another use of the key.
_LABEL = b"fedloom/secagg/pairwise-mask/v1"
_SELF_LABEL = b"fedloom/secagg/self-mask/v1"
# Random bytes appended to session ids so a re-run of the same round never reuses masks.
_SESSION_NONCE_BYTES = 16


@dataclass(frozen=True)
class PairSecret:
    """The X25519 shared secret of two nodes, with the ordered identities it binds to."""

    low_id: str
    high_id: str
    low_public: bytes
    high_public: bytes
    shared: bytes

    def __repr__(self) -> str:
        return f"PairSecret({self.low_id!r}, {self.high_id!r})"


def agree(keys: SecaggKeyPair, *, my_id: str, peer_id: str, peer_public: bytes) -> PairSecret:
    """Run X25519 with one peer; the result is symmetric (both nodes get the same secret)."""
    if peer_id == my_id:
        raise SecaggError(f"node {my_id!r} cannot agree a SecAgg key with itself.")
    my_public = keys.public_bytes()
    if bytes(peer_public) == my_public:
        raise SecaggError(
            f"node {peer_id!r} announced the same SecAgg public key as node {my_id!r}: one of "
            "them copied the other's home directory; re-run `fedloom node init` on a fresh home."
        )
    try:
        shared = keys.private_key.exchange(public_key_from_bytes(peer_public, node_id=peer_id))
    except ValueError as err:
        # X25519 yields all zeros for low-order points: the peer's key is invalid.
        raise SecaggError(
            f"node {peer_id!r} announced an invalid SecAgg public key ({err}): that node must "
            "re-run `fedloom node init`."
        ) from err
    if my_id < peer_id:
        return PairSecret(my_id, peer_id, my_public, bytes(peer_public), shared)
    return PairSecret(peer_id, my_id, bytes(peer_public), my_public, shared)


def mask_seed(pair: PairSecret, *, session_id: str, payload: str) -> bytes:
    """The keystream key of this pair for one payload of one session."""
    info = _LABEL + b"".join(
        length_prefixed(field)
        for field in (
            session_id.encode(),
            payload.encode(),
            pair.low_id.encode(),
            pair.high_id.encode(),
            pair.low_public,
            pair.high_public,
        )
    )
    return HKDF(algorithm=hashes.SHA256(), length=SEED_SIZE, salt=None, info=info).derive(
        pair.shared
    )


def self_mask_seed(seed: bytes, *, session_id: str, node_id: str, payload: str) -> bytes:
    """The keystream key of a node's self mask for one payload, from its 32-byte round seed."""
    info = _SELF_LABEL + b"".join(
        length_prefixed(field.encode()) for field in (session_id, node_id, payload)
    )
    return HKDF(algorithm=hashes.SHA256(), length=SEED_SIZE, salt=None, info=info).derive(seed)


def new_session_id(experiment_id: str, round_number: int) -> str:
    """A session id for one attempt of one round: experiment, round and a random nonce.

    The nonce makes a retried or resumed round a new session, so nodes never mask twice
    under the same seeds.
    """
    return f"{experiment_id}/round-{round_number}/{secrets.token_hex(_SESSION_NONCE_BYTES)}"


def length_prefixed(field: bytes) -> bytes:
    """Encode a field unambiguously (4-byte big-endian length, then the bytes)."""
    return len(field).to_bytes(4, "big") + field
