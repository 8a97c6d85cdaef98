"""Shamir sharing of 32-byte secrets and sealed shares: reconstruction, secrecy, integrity."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from common.errors import SecaggError
from common.secagg.keys import SecaggKeyPair
from common.secagg.shamir import ELEMENTS, PRIME, reconstruct, share_secrets
from common.secagg.share_box import open_share, seal_share


def test_every_threshold_subset_rebuilds_every_secret() -> None:
    secrets = [os.urandom(32) for _ in range(3)]
    points = [1, 2, 3, 4, 5]
    shares = share_secrets(secrets, points, 3)
    assert shares.shape == (5, 3, ELEMENTS)
    for subset in itertools.combinations(range(5), 3):
        assert reconstruct({points[i]: shares[i] for i in subset}, 3) == secrets


def test_fewer_than_threshold_shares_are_refused() -> None:
    shares = share_secrets([os.urandom(32)], [1, 2, 3], 3)
    with pytest.raises(SecaggError, match="needs 3 shares, got 2"):
        reconstruct({1: shares[0], 2: shares[1]}, 3)


def test_below_threshold_shares_of_different_secrets_look_alike() -> None:
    """t - 1 shares are uniform whatever the secret: two fixed secrets give the same spread."""
    zero, ones = bytes(32), b"\xff" * 32
    draws = {s: share_secrets([s] * 2000, [1, 2, 3], 2)[0].astype(np.float64) for s in (zero, ones)}
    for values in draws.values():
        assert abs(values.mean() / PRIME - 0.5) < 0.01
        assert abs(values.std() / PRIME - 12**-0.5) < 0.01


def test_a_random_forged_share_is_detected_on_reconstruction() -> None:
    secret = os.urandom(32)
    shares = share_secrets([secret], [1, 2, 3], 2)
    forged = np.random.default_rng(0).integers(0, PRIME, size=shares[1].shape).astype(np.uint64)
    with pytest.raises(SecaggError, match="inconsistent"):
        reconstruct({1: shares[0], 2: forged}, 2)


def test_duplicate_or_zero_points_are_refused() -> None:
    with pytest.raises(SecaggError, match="distinct and in"):
        share_secrets([os.urandom(32)], [0, 1, 2], 2)
    with pytest.raises(SecaggError, match="distinct and in"):
        share_secrets([os.urandom(32)], [1, 1, 2], 2)


def sealed(
    session: str = "s", sender: str = "a", receiver: str = "b"
) -> tuple[bytes, X25519PrivateKey, X25519PrivateKey]:
    a, b = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    share = (2, share_secrets([os.urandom(32), os.urandom(32)], [1, 2], 2)[1])
    box = seal_share(
        share,
        own_secret=a,
        receiver_public=SecaggKeyPair(b).public_bytes(),
        session_id=session,
        sender=sender,
        receiver=receiver,
    )
    return box, a, b


def test_a_sealed_share_opens_only_for_its_session_sender_and_receiver() -> None:
    box, a, b = sealed()
    a_public = SecaggKeyPair(a).public_bytes()
    x, values = open_share(
        box, own_secret=b, sender_public=a_public, session_id="s", sender="a", receiver="b"
    )
    assert x == 2 and values.shape == (2, ELEMENTS)
    for session, sender, receiver in (("other", "a", "b"), ("s", "c", "b"), ("s", "a", "c")):
        with pytest.raises(SecaggError, match="does not authenticate"):
            open_share(
                box,
                own_secret=b,
                sender_public=a_public,
                session_id=session,
                sender=sender,
                receiver=receiver,
            )
    tampered = bytearray(box)
    tampered[-1] ^= 1
    with pytest.raises(SecaggError, match="does not authenticate"):
        open_share(
            bytes(tampered),
            own_secret=b,
            sender_public=a_public,
            session_id="s",
            sender="a",
            receiver="b",
        )
