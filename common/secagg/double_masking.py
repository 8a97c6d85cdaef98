"""Double masking: a node's self mask on top of its pairwise masks, and their removal.

Node ``i`` sends ``y_i = enc(x_i) + PRG(b_i) + sum_j sign(i, j) PRG(s_ij)`` mod 2^64, where
``b_i`` is its round seed (through :func:`common.secagg.kdf.self_mask_seed`) and ``s_ij`` the
pairwise seed from its round mask key (:func:`common.secagg.kdf.mask_seed`); ``sign`` is +1
toward peers ranked above (node id order) and -1 below, so pairwise masks cancel in a sum.
The researcher removes ``PRG(b_v)`` for each survivor ``v`` (seed rebuilt from shares) and,
for each dropped ``u``, the masks survivors added toward ``u`` (from ``u``'s mask key rebuilt
from shares).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from common.secagg import masking
from common.secagg.kdf import agree, mask_seed, self_mask_seed
from common.secagg.keys import SecaggKeyPair
from common.secagg.settings import SecureAggregation

__all__ = ["DoubleMasker", "removal_seeds", "survivors_sum"]


def _pair_sign(me: str, peer: str) -> int:
    return 1 if peer > me else -1


class DoubleMasker:
    """Masks one node's payloads in one session; ``on_masked(name, shape)`` may refuse (raise)."""

    def __init__(
        self,
        *,
        session_id: str,
        node_id: str,
        self_seed: bytes,
        mask_keys: SecaggKeyPair,
        peer_mask_keys: Mapping[str, bytes],
        settings: SecureAggregation,
        on_masked: Callable[[str, tuple[int, ...]], None],
    ) -> None:
        self.session_id = session_id
        self.node_id = node_id
        self._self_seed = self_seed
        self._codec = settings.codec
        self._on_masked = on_masked
        #: Every node this one masks toward, and itself (node-level DP splits its noise by it).
        self.participants = tuple(sorted({*peer_mask_keys, node_id}))
        self._pairs = {
            peer: agree(mask_keys, my_id=node_id, peer_id=peer, peer_public=public)
            for peer, public in peer_mask_keys.items()
            if peer != node_id
        }

    def mask(self, name: str, values: np.ndarray) -> np.ndarray:
        """Fixed-point encode and double-mask one payload: a uint64 array of the same shape."""
        seeds: list[masking.SignedSeed] = [
            (
                self_mask_seed(
                    self._self_seed, session_id=self.session_id, node_id=self.node_id, payload=name
                ),
                1,
            )
        ]
        seeds += [
            (
                mask_seed(pair, session_id=self.session_id, payload=name),
                _pair_sign(self.node_id, peer),
            )
            for peer, pair in self._pairs.items()
        ]
        masked = masking.mask(values, seeds, self._codec, node_id=self.node_id, name=name)
        self._on_masked(name, tuple(masked.shape))
        return masked


def removal_seeds(
    *,
    session_id: str,
    payload: str,
    survivor_seeds: Mapping[str, bytes],
    dropped_keys: Mapping[str, SecaggKeyPair],
    mask_public_keys: Mapping[str, bytes],
) -> list[masking.SignedSeed]:
    """Signed seeds whose keystreams, added to the survivors' sum, leave ``sum enc(x_v)``.

    ``survivor_seeds`` are the survivors' round seeds, ``dropped_keys`` the dropped nodes'
    rebuilt mask keys, ``mask_public_keys`` every survivor's advertised mask public key.
    """
    seeds: list[masking.SignedSeed] = [
        (self_mask_seed(seed, session_id=session_id, node_id=node, payload=payload), -1)
        for node, seed in survivor_seeds.items()
    ]
    for dropped, keys in dropped_keys.items():
        for survivor in survivor_seeds:
            pair = agree(
                keys, my_id=dropped, peer_id=survivor, peer_public=mask_public_keys[survivor]
            )
            # The survivor added sign(survivor, dropped) * PRG: subtract exactly that.
            sign = _pair_sign(survivor, dropped)
            seeds.append((mask_seed(pair, session_id=session_id, payload=payload), -sign))
    return seeds


def survivors_sum(
    arrays: Sequence[np.ndarray], seeds: Sequence[masking.SignedSeed], shape: tuple[int, ...]
) -> np.ndarray:
    """The survivors' uint64 sum with every mask removed (one chunked pass)."""
    return masking.sum_and_mask(arrays, seeds, shape)
