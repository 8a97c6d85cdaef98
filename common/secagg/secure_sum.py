"""The researcher side of SecAgg for one session: sum masked payloads, recover from dropouts."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from common.errors import PayloadError, SecaggError
from common.secagg.payload import as_masked
from common.secagg.settings import SecureAggregation

__all__ = ["SecureSum"]

logger = logging.getLogger(__name__)

MaskedData = np.ndarray | bytes | bytearray | memoryview


class SecureSum:
    """Running sums of masked payloads for one session; memory is one array per payload name.

    Flow: ``add`` every node's masked payloads; if some participants never delivered,
    ``declare_dropped`` them (once per session), ask every survivor for a correction of each
    payload, ``add_correction`` them; then ``result(name)`` gives the float64 sum.
    Not thread-safe: feed it from the round orchestrator's thread.
    """

    def __init__(
        self,
        session_id: str,
        participants: Iterable[str],
        settings: SecureAggregation,
        *,
        expected_shapes: Mapping[str, Sequence[int]] | None = None,
    ) -> None:
        ids = list(participants)
        if len(set(ids)) != len(ids):
            raise SecaggError(f"SecAgg participants must be distinct node ids, got {ids}.")
        settings.check_participants(len(ids))
        self.session_id = session_id
        self.participants = tuple(sorted(ids))
        self.settings = settings
        self._codec = settings.codec
        self._shapes: dict[str, tuple[int, ...]] = {
            name: tuple(int(n) for n in shape) for name, shape in (expected_shapes or {}).items()
        }
        self._first_sender: dict[str, str] = {}
        self._sums: dict[str, np.ndarray] = {}
        self._contributors: dict[str, set[str]] = {}
        self._corrected: dict[str, set[str]] = {}
        self._dropped: frozenset[str] | None = None

    @property
    def dropped(self) -> frozenset[str]:
        """Participants declared dropped (empty until ``declare_dropped``)."""
        return self._dropped or frozenset()

    @property
    def survivors(self) -> tuple[str, ...]:
        """Participants not declared dropped."""
        return tuple(node for node in self.participants if node not in self.dropped)

    def add(self, node_id: str, name: str, masked: MaskedData) -> None:
        """Add one node's masked payload to the running sum of ``name``."""
        self._check_participant(node_id, name)
        if node_id in self.dropped:
            raise SecaggError(
                f"node {node_id!r} was declared dropped in SecAgg session {self.session_id!r}; "
                f"its late payload {name!r} is refused, since with the survivors' corrections "
                "it would reveal that node's update."
            )
        if node_id in self._contributors.get(name, ()):
            raise PayloadError(
                f"node {node_id!r} sent masked payload {name!r} twice in SecAgg session "
                f"{self.session_id!r}; keep only the first."
            )
        array = self._checked(node_id, name, masked, "masked payload")
        np.add(self._sum(name, array.shape), array, out=self._sums[name])
        self._contributors.setdefault(name, set()).add(node_id)

    def declare_dropped(self, node_ids: Iterable[str]) -> tuple[str, ...]:
        """Fix the session's dropped set; returns the survivors to ask for corrections.

        A dropped node must not have delivered any payload of the session (discard the round
        otherwise), and at least ``settings.min_survivors`` nodes must remain.
        """
        dropped = frozenset(node_ids)
        unknown = sorted(dropped - set(self.participants))
        if unknown:
            raise SecaggError(
                f"cannot declare {unknown} dropped: not participants of SecAgg session "
                f"{self.session_id!r}."
            )
        if self._dropped is not None:
            if dropped != self._dropped:
                raise SecaggError(
                    f"SecAgg session {self.session_id!r} already declared {sorted(self._dropped)} "
                    f"dropped; nodes refuse a second, different set. Discard the round instead."
                )
            return self.survivors
        if not dropped:
            raise SecaggError("declare_dropped needs at least one node id.")
        for name, senders in sorted(self._contributors.items()):
            delivered = sorted(dropped & senders)
            if delivered:
                raise SecaggError(
                    f"node(s) {delivered} already delivered payload {name!r} in SecAgg session "
                    f"{self.session_id!r} and cannot be declared dropped; discard the round."
                )
        remaining = len(self.participants) - len(dropped)
        if remaining < self.settings.min_survivors:
            raise SecaggError(
                f"SecAgg round {self.session_id!r} is unrecoverable: {remaining} survivor(s) "
                f"after dropping {sorted(dropped)}, and nodes reveal no sum over fewer than "
                f"{self.settings.min_survivors}. Discard the round and retry with more nodes."
            )
        self._dropped = dropped
        logger.info(
            "SecAgg session %s: %s dropped; asking %s for corrections",
            self.session_id,
            sorted(dropped),
            list(self.survivors),
        )
        return self.survivors

    def add_correction(self, node_id: str, name: str, correction: MaskedData) -> None:
        """Subtract a survivor's dropout correction from the running sum of ``name``."""
        self._check_participant(node_id, name)
        if self._dropped is None or node_id in self._dropped:
            raise SecaggError(
                f"node {node_id!r} sent a dropout correction for {name!r} but it is not a "
                f"survivor of a declared dropout in SecAgg session {self.session_id!r}."
            )
        if node_id in self._corrected.get(name, ()):
            raise PayloadError(
                f"node {node_id!r} sent its dropout correction for {name!r} twice; keep only "
                "the first."
            )
        array = self._checked(node_id, name, correction, "dropout correction")
        np.subtract(self._sum(name, array.shape), array, out=self._sums[name])
        self._corrected.setdefault(name, set()).add(node_id)

    def waiting_for(self, name: str) -> tuple[str, ...]:
        """Survivors whose payload (or, after dropouts, correction) for ``name`` is missing."""
        contributors = self._contributors.get(name, set())
        corrected = self._corrected.get(name, set())
        return tuple(
            node
            for node in self.survivors
            if node not in contributors or (self._dropped and node not in corrected)
        )

    def result(self, name: str) -> np.ndarray:
        """The float64 sum of every survivor's values for ``name`` (masks cancelled)."""
        missing = self.waiting_for(name)
        if missing:
            raise SecaggError(
                f"SecAgg sum of {name!r} is incomplete: still waiting for {list(missing)} "
                f"(payloads or dropout corrections). Declare them dropped or wait for them."
            )
        return self._codec.decode_sum(self._sums[name])

    def _check_participant(self, node_id: str, name: str) -> None:
        if node_id not in self.participants:
            raise SecaggError(
                f"node {node_id!r} sent SecAgg data for {name!r} but is not a participant of "
                f"session {self.session_id!r}; refusing it."
            )

    def _checked(self, node_id: str, name: str, data: MaskedData, what: str) -> np.ndarray:
        """Validate ``data`` against the shape fixed for ``name`` (the first sender's shape)."""
        shape = self._shapes.get(name)
        try:
            array = as_masked(data, node_id=node_id, name=name, shape=shape, what=what)
        except PayloadError as err:
            first = self._first_sender.get(name)
            if first is None or shape is None:
                raise
            raise PayloadError(f"{err} (shape set by node {first!r})") from err
        if shape is None:
            self._shapes[name] = array.shape
            self._first_sender[name] = node_id
        return array

    def _sum(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in self._sums:
            self._sums[name] = np.zeros(shape, dtype=np.uint64)
        return self._sums[name]
