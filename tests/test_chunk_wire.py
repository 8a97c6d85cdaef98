"""The zero-copy PayloadChunk codec (common/chunk_wire.py) against protobuf's own.

It must write the bytes protobuf writes, read whatever protobuf reads (any field order,
unknown fields, repeats) to the same values, refuse what protobuf refuses, and keep the
received data a view over the wire bytes.
"""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from common.chunk_wire import WireChunk, decode_chunk, encode_chunk, to_message
from common.constants import PROTOCOL_VERSION
from common.proto import fedloom_pb2 as pb
from researcher.server import federation_handlers

MANIFESTS = st.one_of(
    st.none(),
    st.builds(
        lambda total, name: pb.PayloadManifest(
            total_bytes=total,
            arrays=[pb.ArraySpec(name=name, dtype="<f4", shape=[total // 4], nbytes=total)],
        ),
        st.integers(0, 2**40),
        st.text(max_size=8),
    ),
)
CHUNKS = st.builds(
    lambda version, payload_id, manifest, offset, data: pb.PayloadChunk(
        protocol_version=version,
        payload_id=payload_id,
        manifest=manifest,
        offset=offset,
        data=data,
    ),
    st.integers(0, 2**32 - 1),
    st.text(max_size=12),
    MANIFESTS,
    st.integers(0, 2**64 - 1),
    st.binary(max_size=300),
)


def _fields(message: pb.PayloadChunk) -> list[bytes]:
    """The message's wire encoding split into one encoded field each."""
    out = []
    for field in pb.PayloadChunk.DESCRIPTOR.fields:
        single = pb.PayloadChunk()
        if field.message_type is not None:
            if message.HasField(field.name):
                getattr(single, field.name).CopyFrom(getattr(message, field.name))
        else:
            setattr(single, field.name, getattr(message, field.name))
        raw = single.SerializeToString()
        if raw:
            out.append(raw)
    return out


def _same(decoded: WireChunk, expected: pb.PayloadChunk) -> None:
    assert to_message(decoded) == expected
    assert not decoded.head.data


@settings(max_examples=200, deadline=None)
@given(CHUNKS)
def test_encoding_matches_protobuf_byte_for_byte(message: pb.PayloadChunk) -> None:
    head = pb.PayloadChunk()
    head.CopyFrom(message)
    head.ClearField("data")
    assert encode_chunk(WireChunk(head, message.data)) == message.SerializeToString()
    assert encode_chunk(message) == message.SerializeToString()


@settings(max_examples=200, deadline=None)
@given(CHUNKS, st.randoms(use_true_random=False), st.binary(max_size=40))
def test_decoding_reads_any_field_order_like_protobuf(
    message: pb.PayloadChunk, rng: random.Random, unknown_payload: bytes
) -> None:
    fields = _fields(message)
    # An unknown length-delimited field (number 15), as a newer peer could send.
    fields.append(bytes([15 << 3 | 2, len(unknown_payload)]) + unknown_payload)
    rng.shuffle(fields)
    raw = b"".join(fields)
    _same(decode_chunk(raw), pb.PayloadChunk.FromString(raw))


def test_received_data_is_a_view_over_the_wire_bytes() -> None:
    raw = pb.PayloadChunk(payload_id="p", offset=7, data=b"x" * 100_000).SerializeToString()
    decoded = decode_chunk(raw)
    assert isinstance(decoded.data, memoryview)
    assert decoded.data.obj is raw
    assert (decoded.head.payload_id, decoded.head.offset, len(decoded.data)) == ("p", 7, 100_000)


def test_a_repeated_data_field_keeps_protobufs_last_one_wins() -> None:
    first = pb.PayloadChunk(data=b"first").SerializeToString()
    last = pb.PayloadChunk(payload_id="p", data=b"last").SerializeToString()
    decoded = decode_chunk(first + last)
    assert bytes(decoded.data) == b"last"
    _same(decoded, pb.PayloadChunk.FromString(first + last))


def test_many_tiny_fields_go_to_protobufs_parser_with_the_same_result() -> None:
    # 50,000 unknown varint fields then the data: no Python loop over each of them.
    raw = bytes([14 << 3 | 0, 1]) * 50_000 + pb.PayloadChunk(data=b"d").SerializeToString()
    decoded = decode_chunk(raw)
    assert bytes(decoded.data) == b"d"


@pytest.mark.parametrize(
    "raw",
    [
        bytes([5 << 3 | 2, 200]) + b"short",  # data runs past the end
        bytes([4 << 3 | 0, 0x80]),  # truncated varint
        bytes([0x80] * 11),  # overlong key
        bytes([3 << 3 | 2, 3]) + b"\xff\xff\xff",  # manifest that is not a message
    ],
)
def test_malformed_bytes_are_refused_as_protobuf_refuses_them(raw: bytes) -> None:
    with pytest.raises(DecodeError):
        pb.PayloadChunk.FromString(raw)
    with pytest.raises(DecodeError):
        decode_chunk(raw)


def test_a_head_that_carries_data_itself_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="beside the head"):
        encode_chunk(WireChunk(pb.PayloadChunk(data=b"x"), b"y"))


def test_first_chunk_with_manifest_round_trips() -> None:
    manifest = pb.PayloadManifest(total_bytes=8)
    head = pb.PayloadChunk(protocol_version=PROTOCOL_VERSION, payload_id="p", manifest=manifest)
    decoded = decode_chunk(encode_chunk(WireChunk(head, b"12345678")))
    assert decoded.head == head
    assert bytes(decoded.data) == b"12345678"


def test_the_researcher_serves_every_method_of_the_service() -> None:
    service = pb.DESCRIPTOR.services_by_name["Federation"]
    methods = SimpleNamespace(Connect=None, Download=None, Upload=None)
    handlers = federation_handlers(methods)  # type: ignore[arg-type]  # only names matter
    assert set(handlers) == set(service.methods_by_name)
