"""Payload transfer for the node: download into a file-backed buffer, upload from a file.

The node's stub (`FederationStub`) speaks the generated Connect and moves payload chunks
with the zero-copy codec of `common/chunk_wire.py` (the same wire bytes as protobuf's).

An upload cut by a dropped link is sent again, whole, on whatever connection the daemon has
re-established, with capped backoff, until the task's deadline: the researcher accepts the
retry while the task is still pending.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from common.chunk_wire import (
    DOWNLOAD_METHOD,
    UPLOAD_METHOD,
    WireChunk,
    decode_chunk,
    encode_chunk,
)
from common.constants import PROTOCOL_VERSION
from common.payload import EncodedPayload, iter_chunks
from common.payload_files import PayloadAssembler, read_payload_file
from common.proto import fedloom_pb2 as pb
from common.proto import fedloom_pb2_grpc as pb_grpc

__all__ = [
    "RETRYABLE_UPLOAD_CODES",
    "FederationStub",
    "download_payload",
    "upload_payload",
    "upload_with_retry",
]

log = logging.getLogger(__name__)

#: Statuses after which the same upload may succeed later: the link or the researcher was
#: down (UNAVAILABLE, CANCELLED when the daemon closed the channel of a dropped session,
#: UNKNOWN/INTERNAL for a stream reset mid-transfer), or the researcher was busy.
RETRYABLE_UPLOAD_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)

#: First wait before retrying an upload, its growth factor and its cap (seconds).
UPLOAD_RETRY_INITIAL_DELAY = 0.5
UPLOAD_RETRY_BACKOFF = 2.0
UPLOAD_RETRY_MAX_DELAY = 5.0


class FederationStub:
    """The Federation service as the node calls it on one channel."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.Connect = pb_grpc.FederationStub(channel).Connect
        self.Download: grpc.UnaryStreamMultiCallable[pb.DownloadRequest, WireChunk] = (
            channel.unary_stream(
                DOWNLOAD_METHOD,
                request_serializer=pb.DownloadRequest.SerializeToString,
                response_deserializer=decode_chunk,
            )
        )
        self.Upload: grpc.StreamUnaryMultiCallable[WireChunk, pb.UploadAck] = channel.stream_unary(
            UPLOAD_METHOD,
            request_serializer=encode_chunk,
            response_deserializer=pb.UploadAck.FromString,
        )


def download_payload(
    stub: FederationStub, node_id: str, payload_id: str, path: Path
) -> EncodedPayload:
    """Stream a published payload straight into `path` (preallocated from its manifest)."""
    request = pb.DownloadRequest(
        protocol_version=PROTOCOL_VERSION, node_id=node_id, payload_id=payload_id
    )
    assembler = PayloadAssembler(path=path)
    try:
        for chunk in stub.Download(request):
            assembler.feed(chunk)
        return assembler.finish()
    finally:
        assembler.close()


def upload_payload(stub: FederationStub, node_id: str, payload_id: str, path: Path) -> int:
    """Send a payload file in chunks; returns the bytes the researcher acknowledged."""
    payload = read_payload_file(path)
    ack = stub.Upload(
        iter_chunks(payload_id, payload),
        metadata=(("fedloom-node-id", node_id),),
    )
    if ack.received_bytes != payload.nbytes:
        raise grpc.RpcError(
            f"researcher acknowledged {ack.received_bytes} of {payload.nbytes} bytes"
        )
    return int(ack.received_bytes)


def upload_with_retry(
    stub: Callable[[], FederationStub | None],
    node_id: str,
    payload_id: str,
    path: Path,
    deadline: float,
) -> int:
    """`upload_payload` on the current connection (`stub()`), again after each retryable
    failure, until it succeeds or `deadline` (time.monotonic()) passes; then the last error."""
    delay = UPLOAD_RETRY_INITIAL_DELAY
    attempt = 1
    while True:
        current = stub()
        try:
            if current is None:
                raise _NoConnection()
            return upload_payload(current, node_id, payload_id, path)
        except (grpc.RpcError, ValueError, _NoConnection) as exc:
            # ValueError: the channel of a session that ended was closed under us.
            code = exc.code() if isinstance(exc, grpc.RpcError) and hasattr(exc, "code") else None
            retryable = code is None or code in RETRYABLE_UPLOAD_CODES
            if not retryable or time.monotonic() + delay > deadline:
                raise
            log.warning(
                "upload of %s failed (attempt %d: %s); retrying in %.1f s",
                payload_id,
                attempt,
                code.name if code else exc,
                delay,
            )
        time.sleep(delay)
        delay = min(delay * UPLOAD_RETRY_BACKOFF, UPLOAD_RETRY_MAX_DELAY)
        attempt += 1


class _NoConnection(Exception):
    """No connection to the researcher at the moment (the daemon is reconnecting)."""

    def __str__(self) -> str:
        return "not connected to the researcher"
