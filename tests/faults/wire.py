"""A scripted node speaking the wire protocol directly, for hostile and late inputs."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator

import grpc
import numpy as np

from common.chunk_wire import to_message
from common.constants import PROTOCOL_VERSION
from common.grpc_options import channel_options
from common.payload import encode_arrays, iter_chunks
from common.proto import fedloom_pb2 as pb
from common.proto import fedloom_pb2_grpc as pb_grpc


def hello(
    node_id: str, *, version: int = PROTOCOL_VERSION, tags: Iterable[str] = ()
) -> pb.NodeMessage:
    datasets = (
        [pb.DatasetInfo(name="tab", tags=list(tags), n_samples=10, shape=[10, 4])] if tags else []
    )
    return pb.NodeMessage(
        protocol_version=version,
        node_id=node_id,
        hello=pb.Hello(node_id=node_id, node_name=node_id, datasets=datasets),
    )


class WireNode:
    """One control stream on its own channel: messages go up through `send`, come down via `next`."""

    def __init__(
        self,
        address: str,
        first: pb.NodeMessage | None,
        requests: Iterator[pb.NodeMessage] | None = None,
    ) -> None:
        """`requests` replaces the outbox (e.g. a stream that never sends anything)."""
        self.channel = grpc.insecure_channel(address, options=channel_options())
        self.stub = pb_grpc.FederationStub(self.channel)
        self._outbox: queue.Queue[pb.NodeMessage | None] = queue.Queue()
        if first is not None:
            self._outbox.put(first)
        self.responses = self.stub.Connect(requests or iter(self._outbox.get, None))

    def send(self, message: pb.NodeMessage) -> None:
        self._outbox.put(message)

    def next(self) -> pb.ResearcherMessage:
        return next(self.responses)

    def close(self) -> None:
        self._outbox.put(None)
        self.responses.cancel()
        self.channel.close()


def upload(
    stub: pb_grpc.FederationStub, node_id: str | None, chunks: Iterable[pb.PayloadChunk]
) -> pb.UploadAck:
    metadata = (("fedloom-node-id", node_id),) if node_id else ()
    return stub.Upload(iter(chunks), metadata=metadata, timeout=30)


def payload_chunks(payload_id: str, nbytes: int) -> list[pb.PayloadChunk]:
    """A well-formed payload of one float32 array of about `nbytes` bytes."""
    payload = encode_arrays({"w": np.ones(nbytes // 4, "float32")})
    return [to_message(chunk) for chunk in iter_chunks(payload_id, payload)]


def manifest_only(
    payload_id: str, declared: int, hold: threading.Event | None = None
) -> Iterator[pb.PayloadChunk]:
    """A first chunk announcing `declared` bytes and no data; then waits for `hold` if given."""
    manifest = pb.PayloadManifest(total_bytes=declared)
    manifest.arrays.add(name="w", dtype="<u1", shape=[declared], offset=0, nbytes=declared)
    yield pb.PayloadChunk(
        protocol_version=PROTOCOL_VERSION, payload_id=payload_id, manifest=manifest
    )
    if hold is not None:
        hold.wait()
