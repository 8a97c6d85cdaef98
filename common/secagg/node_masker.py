"""The node side of SecAgg for one session: mask payloads, answer dropout corrections."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import numpy as np

from common.errors import SecaggError
from common.secagg import masking
from common.secagg.kdf import PairSecret, agree, mask_seed
from common.secagg.keys import SecaggKeyPair
from common.secagg.ledger import CorrectionLedger
from common.secagg.settings import SecureAggregation

__all__ = ["NodeMasker"]

logger = logging.getLogger(__name__)


class NodeMasker:
    """Masks this node's payloads for one session (experiment, round, attempt).

    ``peers`` maps every participant's node id to its raw 32-byte public key, as relayed by
    the researcher; it may include this node, whose key must then be its own. Pass the node's
    long-lived ``ledger`` so that the once-per-session rules hold across maskers and restarts.
    """

    def __init__(
        self,
        session_id: str,
        my_id: str,
        my_keys: SecaggKeyPair,
        peers: Mapping[str, bytes],
        settings: SecureAggregation,
        *,
        ledger: CorrectionLedger | None = None,
    ) -> None:
        if not session_id:
            raise SecaggError("a SecAgg session id must be non-empty; use new_session_id(...).")
        if not my_id:
            raise SecaggError("a SecAgg node id must be non-empty.")
        own_key = peers.get(my_id)
        if own_key is not None and bytes(own_key) != my_keys.public_bytes():
            raise SecaggError(
                f"the researcher relayed a SecAgg public key for node {my_id!r} that is not this "
                "node's own key: refusing the round (the key may have been substituted)."
            )
        self.session_id = session_id
        self.my_id = my_id
        self.settings = settings
        self.participants = tuple(sorted({*peers, my_id}))
        settings.check_participants(len(self.participants))
        self._codec = settings.codec
        self._ledger = ledger if ledger is not None else CorrectionLedger()
        self._pairs: dict[str, PairSecret] = {
            peer_id: agree(my_keys, my_id=my_id, peer_id=peer_id, peer_public=public)
            for peer_id, public in peers.items()
            if peer_id != my_id
        }

    def _seeds(self, name: str, peer_ids: Iterable[str]) -> list[masking.SignedSeed]:
        """Seeds and signs toward ``peer_ids``: + toward higher-ranked, - toward lower."""
        return [
            (
                mask_seed(self._pairs[peer_id], session_id=self.session_id, payload=name),
                1 if peer_id > self.my_id else -1,
            )
            for peer_id in peer_ids
        ]

    def mask(self, name: str, values: np.ndarray) -> np.ndarray:
        """Fixed-point encode and mask one payload: a uint64 array of the same shape.

        Each ``name`` may be masked once per session. Raises SecaggError naming this node if a
        value is NaN, infinite or outside the clipping range.
        """
        masked = masking.mask(
            values, self._seeds(name, self._pairs), self._codec, node_id=self.my_id, name=name
        )
        # Recorded only once masking succeeded, so a range error does not burn the name.
        self._ledger.record_masked(self.session_id, name, masked.shape)
        return masked

    def dropout_correction(self, name: str, dropped: Iterable[str]) -> np.ndarray:
        """The correction the researcher subtracts from payload ``name`` after ``dropped`` left.

        Refused (SecaggError) when ``dropped`` lists this node or unknown nodes, when fewer than
        ``settings.min_survivors`` participants would remain, when this node never masked
        ``name`` in this session, or when the researcher already reported another dropped set.
        """
        dropped_set = set(dropped)
        if not dropped_set:
            raise SecaggError(
                f"node {self.my_id!r} was asked for a dropout correction of payload {name!r} "
                "with no dropped peer; nothing needs correcting."
            )
        if self.my_id in dropped_set:
            raise SecaggError(
                f"node {self.my_id!r} was asked for a dropout correction that lists itself as "
                "dropped; refusing."
            )
        unknown = sorted(dropped_set - set(self._pairs))
        if unknown:
            raise SecaggError(
                f"node {self.my_id!r} was asked to correct for {unknown}, which are not "
                f"participants of SecAgg session {self.session_id!r}; refusing."
            )
        survivors = len(self.participants) - len(dropped_set)
        if survivors < self.settings.min_survivors:
            raise SecaggError(
                f"node {self.my_id!r} refuses a dropout correction leaving {survivors} "
                f"survivor(s): SecAgg reveals no sum over fewer than "
                f"{self.settings.min_survivors} nodes. Discard this round."
            )
        shape = self._ledger.masked_shape(self.session_id, name)
        self._ledger.accept_dropped(self.session_id, dropped_set)
        return masking.dropout_correction(shape, self._seeds(name, sorted(dropped_set)))
