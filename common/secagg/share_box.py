"""Pairwise encryption of Shamir shares: AES-256-GCM under an HKDF key from X25519.

The researcher relays the shares, so each is sealed for its receiver: the key is
``HKDF-SHA256(X25519(cipher_sk_sender, cipher_pk_receiver))`` with an ``info`` naming the
session, the sender and the receiver (in that order, so each direction has its own key), and
the same fields are the GCM associated data. A share moved to another session, sender or
receiver fails authentication.
"""

from __future__ import annotations

import os
import struct

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from common.errors import SecaggError
from common.secagg.kdf import length_prefixed
from common.secagg.keys import public_key_from_bytes
from common.secagg.shamir import ELEMENTS

__all__ = ["SHARE_SECRETS", "PlainShare", "open_share", "seal_share"]

_LABEL = b"fedloom/secagg/share-box/v1"
_NONCE_BYTES = 12
# Each node shares two secrets with every peer: its self-mask seed and its mask key.
SHARE_SECRETS = 2
# x coordinate, then the elements of both secrets, as little-endian uint32.
_LAYOUT = struct.Struct(f"<I{SHARE_SECRETS * ELEMENTS}I")

# A decrypted share: its x coordinate and a (SHARE_SECRETS, ELEMENTS) array of y values.
PlainShare = tuple[int, np.ndarray]


def _box_key(
    own_secret: X25519PrivateKey, peer_public: bytes, session_id: str, sender: str, receiver: str
) -> tuple[AESGCM, bytes]:
    shared = own_secret.exchange(public_key_from_bytes(peer_public, node_id=sender))
    context = _LABEL + b"".join(
        length_prefixed(field.encode()) for field in (session_id, sender, receiver)
    )
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=context).derive(shared)
    return AESGCM(key), context


def seal_share(
    share: PlainShare,
    *,
    own_secret: X25519PrivateKey,
    receiver_public: bytes,
    session_id: str,
    sender: str,
    receiver: str,
) -> bytes:
    """Encrypt one share for ``receiver``: nonce || ciphertext || tag."""
    x, values = share
    plain = _LAYOUT.pack(x, *(int(v) for v in np.asarray(values).reshape(-1)))
    box, context = _box_key(own_secret, receiver_public, session_id, sender, receiver)
    nonce = os.urandom(_NONCE_BYTES)
    return nonce + box.encrypt(nonce, plain, context)


def open_share(
    sealed: bytes,
    *,
    own_secret: X25519PrivateKey,
    sender_public: bytes,
    session_id: str,
    sender: str,
    receiver: str,
) -> PlainShare:
    """Decrypt a share from ``sender``; SecaggError naming it when it does not authenticate."""
    box, context = _box_key(own_secret, sender_public, session_id, sender, receiver)
    try:
        plain = box.decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], context)
        unpacked = _LAYOUT.unpack(plain)
    except (InvalidTag, struct.error) as err:
        raise SecaggError(
            f"the SecAgg share from node {sender!r} to {receiver!r} in session {session_id!r} "
            "does not authenticate: it was altered, replayed from another session, or encrypted "
            "for another node. Refusing the round."
        ) from err
    values = np.asarray(unpacked[1:], dtype=np.uint64).reshape(SHARE_SECRETS, ELEMENTS)
    return unpacked[0], values
