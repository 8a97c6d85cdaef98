"""SecAgg key pairs (persisted in the node home) and pairwise seed derivation."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from common.errors import SecaggError
from common.secagg import SecaggKeyPair, agree, load_or_create_keypair, mask_seed, new_session_id
from common.secagg.keys import PRIVATE_KEY_FILE


def test_keypair_is_created_private_and_reloaded_identically(tmp_path: Path) -> None:
    first = load_or_create_keypair(tmp_path / "home")
    path = tmp_path / "home" / PRIVATE_KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_keypair(tmp_path / "home").public_bytes() == first.public_bytes()
    assert [p.name for p in path.parent.iterdir()] == [PRIVATE_KEY_FILE]


def test_public_key_is_32_raw_bytes(tmp_path: Path) -> None:
    public = load_or_create_keypair(tmp_path).public_bytes()
    assert isinstance(public, bytes) and len(public) == 32


def test_distinct_homes_get_distinct_keys(tmp_path: Path) -> None:
    assert (
        load_or_create_keypair(tmp_path / "a").public_bytes()
        != load_or_create_keypair(tmp_path / "b").public_bytes()
    )


def test_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    load_or_create_keypair(tmp_path)
    os.chmod(tmp_path / PRIVATE_KEY_FILE, 0o644)
    with pytest.raises(SecaggError, match="chmod 600"):
        load_or_create_keypair(tmp_path)


def test_corrupt_key_file_is_refused_with_fix(tmp_path: Path) -> None:
    path = tmp_path / PRIVATE_KEY_FILE
    path.write_bytes(b"not a key")
    path.chmod(0o600)
    with pytest.raises(SecaggError, match="delete it"):
        load_or_create_keypair(tmp_path)


def test_pair_secret_is_symmetric() -> None:
    a, b = SecaggKeyPair.generate(), SecaggKeyPair.generate()
    ab = agree(a, my_id="a", peer_id="b", peer_public=b.public_bytes())
    ba = agree(b, my_id="b", peer_id="a", peer_public=a.public_bytes())
    assert ab == ba
    assert mask_seed(ab, session_id="s", payload="w") == mask_seed(ba, session_id="s", payload="w")


def test_seeds_differ_across_session_payload_and_pair() -> None:
    keys = {node: SecaggKeyPair.generate() for node in "abc"}
    pair = {
        (x, y): agree(keys[x], my_id=x, peer_id=y, peer_public=keys[y].public_bytes())
        for x, y in [("a", "b"), ("a", "c"), ("b", "c")]
    }
    seeds = [
        mask_seed(p, session_id=session, payload=payload)
        for p in pair.values()
        for session in ("exp/round-1/x", "exp/round-2/x", "other/round-1/x")
        for payload in ("params", "aux/scaffold/state")
    ]
    assert len(set(seeds)) == len(seeds) == 18
    assert all(len(seed) == 16 for seed in seeds)


def test_field_boundaries_cannot_be_shifted_to_collide() -> None:
    a, b = SecaggKeyPair.generate(), SecaggKeyPair.generate()
    pair = agree(a, my_id="a", peer_id="b", peer_public=b.public_bytes())
    assert mask_seed(pair, session_id="s1", payload="w") != mask_seed(
        pair, session_id="s", payload="1w"
    )


def test_session_ids_differ_per_attempt_of_the_same_round() -> None:
    first, second = new_session_id("exp", 3), new_session_id("exp", 3)
    assert first != second and first.startswith("exp/round-3/")


@pytest.mark.parametrize("public", [b"\x01" * 31, bytes(32)])
def test_invalid_peer_key_is_refused_naming_the_peer(public: bytes) -> None:
    with pytest.raises(SecaggError, match="node 'mallory'"):
        agree(SecaggKeyPair.generate(), my_id="a", peer_id="mallory", peer_public=public)


def test_peer_announcing_my_own_key_is_refused() -> None:
    mine = SecaggKeyPair.generate()
    with pytest.raises(SecaggError, match="same SecAgg public key"):
        agree(mine, my_id="a", peer_id="b", peer_public=mine.public_bytes())
