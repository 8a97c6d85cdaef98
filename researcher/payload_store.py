"""Payloads the researcher serves (global models) and the ones nodes uploaded."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass

from common.errors import PayloadError
from common.payload import EncodedPayload

__all__ = ["PayloadStore"]


@dataclass
class _Published:
    payload: EncodedPayload
    allowed: frozenset[str]


class PayloadStore:
    """Thread-safe maps of published and received payloads.

    A global model is published once per round and served to every selected node from the
    same buffer; uploads are kept until the round that expects them takes them.
    """

    def __init__(self) -> None:
        self._published: dict[str, _Published] = {}
        self._received: dict[tuple[str, str], EncodedPayload] = {}
        self._lock = threading.Lock()

    def publish(self, payload_id: str, payload: EncodedPayload, allowed: Iterable[str]) -> None:
        with self._lock:
            self._published[payload_id] = _Published(payload, frozenset(allowed))

    def unpublish(self, payload_id: str) -> None:
        with self._lock:
            self._published.pop(payload_id, None)

    def fetch(self, payload_id: str, node_id: str) -> EncodedPayload:
        """The payload a node may download, or PayloadError."""
        with self._lock:
            entry = self._published.get(payload_id)
        if entry is None:
            raise PayloadError(f"payload {payload_id!r} is not (or no longer) published")
        if node_id not in entry.allowed:
            raise PayloadError(f"node {node_id!r} was not sent payload {payload_id!r}")
        return entry.payload

    def put_upload(self, node_id: str, payload_id: str, payload: EncodedPayload) -> None:
        with self._lock:
            self._received[(node_id, payload_id)] = payload

    def take_upload(self, node_id: str, payload_id: str) -> EncodedPayload:
        """Remove and return an upload; PayloadError if the node never sent it."""
        with self._lock:
            payload = self._received.pop((node_id, payload_id), None)
        if payload is None:
            raise PayloadError(
                f"node {node_id!r} referenced payload {payload_id!r} it never uploaded"
            )
        return payload

    def drop_uploads_of(self, node_id: str) -> None:
        with self._lock:
            for key in [k for k in self._received if k[0] == node_id]:
                del self._received[key]
