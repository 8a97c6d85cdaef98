"""The gRPC Federation service: control streams, payload downloads and uploads."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

import grpc

from common.constants import HEARTBEAT_INTERVAL, PROTOCOL_VERSION
from common.errors import FedloomError, PayloadError
from common.payload import PayloadAssembler, iter_chunks
from common.proto import fedloom_pb2 as pb
from common.proto import fedloom_pb2_grpc as pb_grpc
from researcher.node_directory import ConnectedNode, NodeDirectory
from researcher.payload_store import PayloadStore

__all__ = ["FederationServicer", "NodeAuthenticator"]

log = logging.getLogger(__name__)

#: Checks that the caller may act as `claimed_node_id`; returns a refusal reason or None.
NodeAuthenticator = Callable[[grpc.ServicerContext, str], str | None]


def allow_any_node(context: grpc.ServicerContext, claimed_node_id: str) -> str | None:
    """Authenticator for plain-text development setups: every claimed id is believed."""
    return None


def _metadata_text(context: grpc.ServicerContext, key: str) -> str:
    """A text metadata value ("" when absent; binary values, keyed `-bin`, are not text)."""
    value = dict(context.invocation_metadata()).get(key, "")
    return value if isinstance(value, str) else ""


def _version_error(version: int) -> str:
    return (
        f"protocol version {version} is not supported by this researcher (speaks "
        f"{PROTOCOL_VERSION}): install the same fedloom version on the node and the researcher"
    )


class FederationServicer(pb_grpc.FederationServicer):
    """Serves the nodes: one Connect stream each, plus chunked payload transfer."""

    def __init__(
        self,
        directory: NodeDirectory,
        payloads: PayloadStore,
        researcher_id: str,
        authenticate: NodeAuthenticator = allow_any_node,
    ) -> None:
        self._directory = directory
        self._payloads = payloads
        self._researcher_id = researcher_id
        self._authenticate = authenticate

    # -- control stream ---------------------------------------------------------------
    def Connect(
        self, request_iterator: Iterator[pb.NodeMessage], context: grpc.ServicerContext
    ) -> Iterator[pb.ResearcherMessage]:
        try:
            first = next(request_iterator)
        except StopIteration:
            return
        refusal = self._check_hello(first, context)
        if refusal is not None:
            log.warning("refused node %r from %s: %s", first.node_id, context.peer(), refusal)
            yield pb.ResearcherMessage(
                protocol_version=PROTOCOL_VERSION, refusal=pb.Refusal(reason=refusal)
            )
            return
        node = self._directory.register(first.hello, context.peer())
        reader = threading.Thread(
            target=self._read_stream,
            args=(node, request_iterator),
            name=f"read-{node.node_id}",
            daemon=True,
        )
        reader.start()
        context.add_callback(lambda: self._directory.unregister(node, "connection closed"))
        yield pb.ResearcherMessage(
            protocol_version=PROTOCOL_VERSION,
            welcome=pb.Welcome(
                researcher_id=self._researcher_id, heartbeat_interval=HEARTBEAT_INTERVAL
            ),
        )
        while True:
            message = node.outbox.get()
            if message is None or not context.is_active():
                return
            message.protocol_version = PROTOCOL_VERSION
            yield message

    def _check_hello(self, first: pb.NodeMessage, context: grpc.ServicerContext) -> str | None:
        if first.protocol_version != PROTOCOL_VERSION:
            return _version_error(first.protocol_version)
        if first.WhichOneof("body") != "hello":
            return "the first message on a connection must be Hello"
        if not first.hello.node_id or first.hello.node_id != first.node_id:
            return "Hello must carry the node's id, the same in the envelope and the body"
        return self._authenticate(context, first.hello.node_id)

    def _read_stream(self, node: ConnectedNode, request_iterator: Iterator[pb.NodeMessage]) -> None:
        reason = "stream closed by the node"
        try:
            for message in request_iterator:
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
        except grpc.RpcError as exc:
            reason = f"connection lost ({exc.code().name if hasattr(exc, 'code') else exc})"
        except Exception as exc:  # a broken stream must never kill the server
            log.exception("error while reading from node %s", node.label)
            reason = f"error reading its stream: {exc}"
        self._directory.unregister(node, reason)

    # -- payloads -------------------------------------------------------------------------
    def Download(
        self, request: pb.DownloadRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.PayloadChunk]:
        if request.protocol_version != PROTOCOL_VERSION:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, _version_error(request.protocol_version)
            )
        refusal = self._authenticate(context, request.node_id)
        if refusal is not None:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, refusal)
        try:
            payload = self._payloads.fetch(request.payload_id, request.node_id)
        except PayloadError as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        yield from iter_chunks(request.payload_id, payload)

    def Upload(
        self, request_iterator: Iterator[pb.PayloadChunk], context: grpc.ServicerContext
    ) -> pb.UploadAck:
        node_id = _metadata_text(context, "fedloom-node-id")
        refusal = (
            self._authenticate(context, node_id)
            if node_id
            else "Upload without fedloom-node-id metadata"
        )
        if refusal is not None:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, refusal)
        node = self._directory.get(node_id)
        if node is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"node {node_id!r} is not connected")
        assembler = PayloadAssembler()
        try:
            for chunk in request_iterator:
                assembler.feed(chunk)
            payload = assembler.finish()
        except FedloomError as exc:
            log.warning("refused an upload from node %s: %s", node_id, exc)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        self._payloads.put_upload(node_id, assembler.payload_id, payload)
        return pb.UploadAck(
            protocol_version=PROTOCOL_VERSION,
            payload_id=assembler.payload_id,
            received_bytes=assembler.received,
        )
