"""The gRPC Federation service on grpc.aio: control streams, payload downloads and uploads.

Every stream is a coroutine on the server's event loop, so an idle or slow peer costs a few
kilobytes and no thread. Work done before a peer proves who it is is bounded in time (Hello
within `ServerLimits.hello_timeout`) and in count (streams waiting for Hello per host and in
all); uploads are accepted only when a pending task expects them, up to its size, within a
global budget of bytes held (see researcher/server_limits.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, cast

import grpc
import grpc.aio

from common.chunk_wire import WireChunk
from common.constants import HEARTBEAT_INTERVAL, PROTOCOL_VERSION
from common.errors import FedloomError
from common.payload import iter_chunks
from common.payload_files import PayloadAssembler
from common.proto import fedloom_pb2 as pb
from common.proto import fedloom_pb2_grpc as pb_grpc
from common.trace import span
from researcher.node_directory import ConnectedNode, NodeDirectory
from researcher.payload_store import PayloadStore
from researcher.server_limits import ServerLimits

__all__ = ["FederationServicer", "NodeAuthenticator", "allow_any_node"]

log = logging.getLogger(__name__)

#: Checks that the caller may act as `claimed_node_id`; returns a refusal reason or None. It
#: may also refuse by calling `context.abort(code, details)`, which ends the call with that
#: status (the context it gets offers auth_context(), peer(), invocation_metadata(), abort()).
NodeAuthenticator = Callable[[grpc.ServicerContext, str], str | None]


def allow_any_node(context: grpc.ServicerContext, claimed_node_id: str) -> str | None:
    """Authenticator for plain-text development setups: every claimed id is believed."""
    return None


class _Refused(Exception):
    """An authenticator called abort(): carried out of its synchronous code to the coroutine."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class _AuthView:
    """The synchronous face of an aio call that authenticators use (their abort raises)."""

    def __init__(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self._context = context

    def auth_context(self) -> dict[str, Sequence[bytes]]:
        return cast(dict[str, Sequence[bytes]], self._context.auth_context())

    def peer(self) -> str:
        return self._context.peer()

    def invocation_metadata(self) -> Any:
        return self._context.invocation_metadata()

    def abort(self, code: grpc.StatusCode, details: str = "") -> NoReturn:
        raise _Refused(code, details)


async def _abort(context: Any, code: grpc.StatusCode, details: str) -> NoReturn:
    """End the call with `code` and `details` (grpc.aio's abort raises; this says so to mypy)."""
    await context.abort(code, details)
    raise AssertionError("grpc.aio's abort returned instead of raising")


def _metadata_text(context: grpc.aio.ServicerContext[Any, Any], key: str) -> str:
    """A text metadata value ("" when absent; binary values, keyed `-bin`, are not text)."""
    for item_key, value in context.invocation_metadata() or ():
        if item_key == key:
            return value if isinstance(value, str) else ""
    return ""


def _peer_host(peer: str) -> str:
    """The address part of a gRPC peer string ("ipv4:1.2.3.4:5678" -> "ipv4:1.2.3.4")."""
    return peer.rsplit(":", 1)[0] if peer.count(":") >= 2 else peer


def _version_error(version: int) -> str:
    return (
        f"protocol version {version} is not supported by this researcher (speaks "
        f"{PROTOCOL_VERSION}): install the same fedloom version on the node and the researcher"
    )


class FederationServicer(pb_grpc.FederationServicer):
    """Serves the nodes: one Connect stream each, plus chunked payload transfer.

    Runs on one event loop: the counters below are only touched there, without locks.
    """

    def __init__(
        self,
        directory: NodeDirectory,
        payloads: PayloadStore,
        researcher_id: str,
        authenticate: NodeAuthenticator = allow_any_node,
        limits: ServerLimits | None = None,
    ) -> None:
        self._directory = directory
        self._payloads = payloads
        self._researcher_id = researcher_id
        self._authenticate = authenticate
        self._limits = limits or ServerLimits()
        self._open_streams = 0
        self._pending: Counter[str] = Counter()  # host -> streams waiting for Hello
        self._uploads: Counter[str] = Counter()  # node id -> uploads open

    @property
    def open_streams(self) -> int:
        """Control streams open now (waiting for Hello or serving a node)."""
        return self._open_streams

    @property
    def waiting_for_hello(self) -> int:
        """Control streams open now that have not said Hello yet."""
        return sum(self._pending.values())

    async def _refuse_by_auth(
        self, context: grpc.aio.ServicerContext[Any, Any], claimed: str
    ) -> str | None:
        """Run the authenticator; its abort() ends the call here with its own status."""
        try:
            return self._authenticate(cast(grpc.ServicerContext, _AuthView(context)), claimed)
        except _Refused as refused:
            await _abort(context, refused.code, refused.details)
            raise  # unreachable: abort raises

    # -- control stream ---------------------------------------------------------------
    def _admit_stream(self, host: str) -> str | None:
        limits = self._limits
        if self._open_streams >= limits.max_open_streams:
            return (
                f"the researcher serves its maximum of {limits.max_open_streams} control "
                "streams; try again later"
            )
        if sum(self._pending.values()) >= limits.max_pending_streams:
            return (
                f"{limits.max_pending_streams} connections are already waiting to say Hello; "
                "try again later"
            )
        if self._pending[host] >= limits.max_pending_streams_per_host:
            return (
                f"{limits.max_pending_streams_per_host} connections from {host} are already "
                "waiting to say Hello; a node opens one at a time"
            )
        return None

    def _done_waiting(self, host: str) -> None:
        self._pending[host] -= 1
        if self._pending[host] <= 0:
            del self._pending[host]

    async def Connect(  # type: ignore[override]
        self, request_iterator: AsyncIterator[pb.NodeMessage], context: Any
    ) -> None:
        host = _peer_host(context.peer())
        refusal = self._admit_stream(host)
        if refusal is not None:
            log.warning("refused a stream from %s: %s", context.peer(), refusal)
            await _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, refusal)
        self._open_streams += 1
        self._pending[host] += 1
        waiting = True
        node: ConnectedNode | None = None
        try:
            timeout = self._limits.hello_timeout
            try:
                first = await asyncio.wait_for(context.read(), timeout)
            except TimeoutError:
                log.warning(
                    "closed a stream from %s: no Hello within %g s", context.peer(), timeout
                )
                await _abort(
                    context,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"no Hello within {timeout:g} s of opening the stream: a node's first "
                    "message must be its Hello",
                )
            self._done_waiting(host)
            waiting = False
            if first is grpc.aio.EOF:
                return
            refusal = await self._check_hello(first, context)
            if refusal is not None:
                log.warning("refused node %r from %s: %s", first.node_id, context.peer(), refusal)
                await context.write(
                    pb.ResearcherMessage(
                        protocol_version=PROTOCOL_VERSION, refusal=pb.Refusal(reason=refusal)
                    )
                )
                return
            node = self._directory.register(first.hello, context.peer())
            reader = asyncio.ensure_future(self._read_stream(node, context))
            try:
                await context.write(
                    pb.ResearcherMessage(
                        protocol_version=PROTOCOL_VERSION,
                        welcome=pb.Welcome(
                            researcher_id=self._researcher_id,
                            heartbeat_interval=HEARTBEAT_INTERVAL,
                        ),
                    )
                )
                while True:
                    message = await node.outbox.get()
                    if message is None:
                        return
                    message.protocol_version = PROTOCOL_VERSION
                    await context.write(message)
            finally:
                reader.cancel()
        finally:
            if waiting:
                self._done_waiting(host)
            self._open_streams -= 1
            if node is not None:
                self._directory.unregister(node, "connection closed")

    async def _check_hello(self, first: pb.NodeMessage, context: Any) -> str | None:
        if first.protocol_version != PROTOCOL_VERSION:
            return _version_error(first.protocol_version)
        if first.WhichOneof("body") != "hello":
            return "the first message on a connection must be Hello"
        if not first.hello.node_id or first.hello.node_id != first.node_id:
            return "Hello must carry the node's id, the same in the envelope and the body"
        return await self._refuse_by_auth(context, first.hello.node_id)

    async def _read_stream(self, node: ConnectedNode, context: Any) -> None:
        reason = "stream closed by the node"
        try:
            while True:
                message = await context.read()
                if message is grpc.aio.EOF:
                    break
                node.last_seen = time.monotonic()
                if message.protocol_version != PROTOCOL_VERSION:
                    reason = _version_error(message.protocol_version)
                    break
                kind = message.WhichOneof("body")
                if kind == "heartbeat":
                    node.state = message.heartbeat.state or node.state
                elif kind == "reply":
                    self._directory.emit("reply", node, message.reply)
                elif kind == "log":
                    self._directory.emit("log", node, message.log)
        except asyncio.CancelledError:
            raise
        except grpc.RpcError as exc:
            reason = f"connection lost ({exc.code().name if hasattr(exc, 'code') else exc})"
        except Exception as exc:  # a broken stream must never kill the server
            log.exception("error while reading from node %s", node.label)
            reason = f"error reading its stream: {exc}"
        self._directory.unregister(node, reason)

    # -- payloads -------------------------------------------------------------------------
    # Chunks use common/chunk_wire.py's codec, not the generated message types.
    async def Download(  # type: ignore[override]
        self, request: pb.DownloadRequest, context: Any
    ) -> AsyncIterator[WireChunk]:
        if request.protocol_version != PROTOCOL_VERSION:
            await _abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                _version_error(request.protocol_version),
            )
        refusal = await self._refuse_by_auth(context, request.node_id)
        if refusal is not None:
            await _abort(context, grpc.StatusCode.PERMISSION_DENIED, refusal)
        try:
            payload = self._payloads.fetch(request.payload_id, request.node_id)
        except FedloomError as exc:
            await _abort(context, grpc.StatusCode.NOT_FOUND, str(exc))
        with span("researcher.serve_download", node=request.node_id[:8]):
            for chunk in iter_chunks(request.payload_id, payload):
                yield chunk

    async def Upload(  # type: ignore[override]
        self, request_iterator: AsyncIterator[WireChunk], context: Any
    ) -> pb.UploadAck:
        node_id = _metadata_text(context, "fedloom-node-id")
        if not node_id:
            await _abort(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                "Upload without fedloom-node-id metadata",
            )
        refusal = await self._refuse_by_auth(context, node_id)
        if refusal is not None:
            await _abort(context, grpc.StatusCode.PERMISSION_DENIED, refusal)
        if self._directory.get(node_id) is None:
            await _abort(
                context,
                grpc.StatusCode.UNAVAILABLE,
                f"node {node_id!r} has no open control stream: connect (say Hello) before "
                "uploading",
            )
        limits = self._limits
        if self._uploads[node_id] >= limits.max_uploads_per_node:
            await _abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"node {node_id!r} already has {limits.max_uploads_per_node} uploads open",
            )
        if sum(self._uploads.values()) >= limits.max_concurrent_uploads:
            await _abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the researcher receives its maximum of {limits.max_concurrent_uploads} "
                "uploads at once; try again later",
            )
        self._uploads[node_id] += 1
        try:
            with span("researcher.receive_upload", node=node_id[:8]):
                return await self._receive(node_id, context)
        finally:
            self._uploads[node_id] -= 1
            if self._uploads[node_id] <= 0:
                del self._uploads[node_id]

    async def _next_chunk(self, context: Any) -> Any:
        timeout = self._limits.upload_chunk_timeout
        try:
            return await asyncio.wait_for(context.read(), timeout)
        except TimeoutError:
            await _abort(
                context,
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"upload stalled: nothing received for {timeout:g} s",
            )

    async def _receive(self, node_id: str, context: Any) -> pb.UploadAck:
        """Assemble one expected upload, counting its bytes against the budget as they come."""
        reserved = 0
        kept = False
        assembler: PayloadAssembler | None = None
        spooled: Path | None = None
        try:
            chunk = await self._next_chunk(context)
            if chunk is grpc.aio.EOF:
                await _abort(
                    context,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "empty payload stream: no manifest received",
                )
            payload_id = chunk.head.payload_id
            expected = self._payloads.expected(node_id, payload_id)
            if expected is None:
                await _abort(
                    context,
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"no pending task of node {node_id!r} expects payload {payload_id!r} (its "
                    "task ended, or never existed): upload refused",
                )
            declared = int(chunk.head.manifest.total_bytes)
            if declared > expected.max_bytes:
                await _abort(
                    context,
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"payload {payload_id!r} declares {declared} bytes, more than the "
                    f"{expected.max_bytes} the researcher expects for this task",
                )
            # On disk as it comes: no upload-sized buffer in memory (mapped once complete).
            # Scanned for NaNs as it comes too, while the bytes are in hand: the round then
            # folds the upload in one pass over its file, not a scan and a fold.
            spooled = self._payloads.spool_path()
            assembler = PayloadAssembler(path=spooled, limit=expected.max_bytes, scan_finite=True)
            while chunk is not grpc.aio.EOF:
                if expected.ended:
                    await _abort(
                        context,
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"the task that expected payload {payload_id!r} ended during its upload",
                    )
                size = len(chunk.data)
                if not self._payloads.reserve(size):
                    await _abort(
                        context,
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"the researcher holds {self._payloads.bytes_in_flight} bytes of uploads "
                        f"(budget {self._payloads.budget_bytes}); retry later",
                    )
                reserved += size
                assembler.feed(chunk)
                chunk = await self._next_chunk(context)
            payload = assembler.finish()
            kept = self._payloads.put_upload(node_id, payload_id, payload, reserved)
            if not kept:
                await _abort(
                    context,
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"the task that expected payload {payload_id!r} ended before its upload "
                    "completed",
                )
        except FedloomError as exc:
            log.warning("refused an upload from node %s: %s", node_id, exc)
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        finally:
            if assembler is not None:
                assembler.close()
            if spooled is not None:
                # Mapped if kept (the mapping outlives the name), useless otherwise.
                spooled.unlink(missing_ok=True)
            if not kept and reserved:
                self._payloads.release(reserved)  # refused or cut: its memory goes now
        assert assembler is not None  # every path that leaves it None aborted above
        return pb.UploadAck(
            protocol_version=PROTOCOL_VERSION,
            payload_id=assembler.payload_id,
            received_bytes=assembler.received,
        )
