"""Payload transfer for the node: download into a file-backed buffer, upload from a file."""

from __future__ import annotations

from pathlib import Path

import grpc

from common.constants import PROTOCOL_VERSION
from common.payload import EncodedPayload, PayloadAssembler, iter_chunks, read_payload_file
from common.proto import fedloom_pb2 as pb
from common.proto import fedloom_pb2_grpc as pb_grpc

__all__ = ["download_payload", "upload_payload"]


def download_payload(
    stub: pb_grpc.FederationStub, node_id: str, payload_id: str, path: Path
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


def upload_payload(stub: pb_grpc.FederationStub, node_id: str, payload_id: str, path: Path) -> int:
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
