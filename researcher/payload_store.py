"""Payloads the researcher serves (global models) and the uploads it expects from nodes."""

from __future__ import annotations

import shutil
import tempfile
import threading
import uuid
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from common.errors import PayloadError
from common.payload import EncodedPayload
from researcher.server_limits import MAX_UPLOAD_BYTES_IN_FLIGHT

__all__ = ["ExpectedUpload", "PayloadStore"]


@dataclass
class _Published:
    payload: EncodedPayload
    allowed: frozenset[str]


@dataclass
class ExpectedUpload:
    """An upload a pending task will produce: who sends it, under which id, how large at most.

    `ended` turns true when the task ends; an upload still arriving then stops at its next chunk.
    """

    node_id: str
    payload_id: str
    max_bytes: int
    ended: bool = False


@dataclass
class _Received:
    payload: EncodedPayload
    reserved: int


class PayloadStore:
    """Thread-safe maps of published payloads, expected uploads and received ones.

    A global model is published once per round and served to every selected node from the
    same buffer. An upload is accepted only while a task expects it, up to that task's size,
    and only while the bytes held for all uploads stay within the budget; it is kept until
    the round takes it, and freed as soon as its task ends without taking it. Uploads are
    spooled to files in a private temporary folder (`spool_path`), so one held upload
    costs disk and page cache, not the researcher's resident memory, until it is read.
    """

    def __init__(self, budget_bytes: int = MAX_UPLOAD_BYTES_IN_FLIGHT) -> None:
        self._spool: Path | None = None
        self._published: dict[str, _Published] = {}
        self._expected: dict[tuple[str, str], ExpectedUpload] = {}
        self._received: dict[tuple[str, str], _Received] = {}
        self._budget = budget_bytes
        self._in_flight = 0
        self._lock = threading.Lock()

    # -- global models --------------------------------------------------------------------
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

    # -- uploads --------------------------------------------------------------------------
    def spool_path(self) -> Path:
        """A fresh file path for one upload; the caller unlinks it once mapped or refused."""
        with self._lock:
            if self._spool is None:
                self._spool = Path(tempfile.mkdtemp(prefix="fedloom-uploads-"))
                weakref.finalize(self, shutil.rmtree, self._spool, ignore_errors=True)
            return self._spool / f"{uuid.uuid4().hex}.upload"

    def expect(self, node_id: str, payload_id: str, max_bytes: int) -> None:
        """Accept one upload `payload_id` from `node_id`, of at most `max_bytes`."""
        with self._lock:
            self._expected[(node_id, payload_id)] = ExpectedUpload(node_id, payload_id, max_bytes)

    def expected(self, node_id: str, payload_id: str) -> ExpectedUpload | None:
        with self._lock:
            return self._expected.get((node_id, payload_id))

    def forget(self, node_id: str, payload_id: str) -> None:
        """The task ended: refuse its upload from now on and free it if it came unused."""
        with self._lock:
            entry = self._expected.pop((node_id, payload_id), None)
            if entry is not None:
                entry.ended = True
            received = self._received.pop((node_id, payload_id), None)
            if received is not None:
                self._in_flight -= received.reserved

    def reserve(self, nbytes: int) -> bool:
        """Count `nbytes` more against the upload budget; False (nothing counted) if over it."""
        with self._lock:
            if self._in_flight + nbytes > self._budget:
                return False
            self._in_flight += nbytes
            return True

    def release(self, nbytes: int) -> None:
        with self._lock:
            self._in_flight -= nbytes

    @property
    def bytes_in_flight(self) -> int:
        """Bytes held for uploads now (assembling, or received and not yet taken)."""
        with self._lock:
            return self._in_flight

    @property
    def budget_bytes(self) -> int:
        return self._budget

    def held_uploads(self) -> list[tuple[str, str]]:
        """(node id, payload id) of the uploads received and not yet taken."""
        with self._lock:
            return list(self._received)

    def put_upload(
        self, node_id: str, payload_id: str, payload: EncodedPayload, reserved: int = 0
    ) -> bool:
        """Keep a complete upload and the `reserved` budget bytes it holds; False (kept
        nothing, the caller releases) when its task is no longer expecting it."""
        with self._lock:
            entry = self._expected.get((node_id, payload_id))
            if entry is None or entry.ended:
                return False
            replaced = self._received.pop((node_id, payload_id), None)
            if replaced is not None:  # a retry completed after an earlier attempt did
                self._in_flight -= replaced.reserved
            self._received[(node_id, payload_id)] = _Received(payload, reserved)
            return True

    def take_upload(self, node_id: str, payload_id: str) -> EncodedPayload:
        """Remove and return an upload; PayloadError if the node never sent it."""
        with self._lock:
            received = self._received.pop((node_id, payload_id), None)
            if received is not None:
                self._in_flight -= received.reserved
        if received is None:
            raise PayloadError(
                f"node {node_id!r} referenced payload {payload_id!r} it never uploaded"
            )
        return received.payload

    def drop_uploads_of(self, node_id: str) -> None:
        """Free every upload of a node and stop expecting any."""
        with self._lock:
            keys = {k for k in [*self._expected, *self._received] if k[0] == node_id}
        for key in keys:
            self.forget(*key)
