"""Property-based tests of payload decoding and reassembly (common/payload.py), as a hostile
peer would drive them: any manifest, any chunk stream, any file.

The properties: honest payloads round-trip exactly; anything else ends in one of our own
errors (FedloomError), and never makes the receiver allocate more than the size it
declared and the receiver accepted.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from common.constants import PROTOCOL_VERSION
from common.errors import FedloomError
from common.payload import decode_arrays, encode_arrays, iter_chunks
from common.payload_files import PayloadAssembler, read_payload_file, write_payload_file
from common.proto import fedloom_pb2 as pb

#: The receiver's payload limit in these tests: small, so an accepted payload is cheap.
LIMIT = 1 << 20

#: Bytes of bookkeeping (dicts, numpy views, protobuf objects) allowed on top of what a
#: payload itself needs; far below the sizes a lying manifest declares here.
SLACK = 256 * 1024

#: dtype strings a peer may send: the accepted numeric ones and a few hostile ones.
DTYPES = ["<f4", "<f8", "<i8", "|u1", "|b1", "<f2", ">f4", "<c8", "|O", "<U4", "V8", "i4,i4", ","]

#: Largest dimension drawn: three of them overflow an int64 element count.
MAX_DIM = 2**40

SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

NUMERIC = st.sampled_from([np.float32, np.float64, np.int64, np.uint8, np.bool_, np.float16])
ARRAYS = st.dictionaries(
    st.text(min_size=1, max_size=8),
    hnp.arrays(NUMERIC, hnp.array_shapes(min_dims=0, max_dims=3, max_side=5)),
    max_size=4,
)

SPECS = st.builds(
    pb.ArraySpec,
    name=st.text(max_size=4),
    dtype=st.sampled_from(DTYPES),
    shape=st.lists(st.integers(-2, MAX_DIM) | st.integers(0, 6), max_size=3),
    offset=st.integers(0, 2 * LIMIT),
    nbytes=st.integers(0, 2 * LIMIT),
)
MANIFESTS = st.builds(
    pb.PayloadManifest,
    arrays=st.lists(SPECS, max_size=4),
    total_bytes=st.integers(0, 2**63) | st.integers(0, 2 * LIMIT) | st.integers(0, 512),
)


def _peak_bytes(action: Callable[[], Any]) -> tuple[Any, int]:
    """Run `action`; return its outcome (value or FedloomError) and the peak bytes it allocated."""
    tracemalloc.start()
    try:
        try:
            outcome: Any = action()
        except FedloomError as exc:
            outcome = exc
        return outcome, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _hostile_chunks(
    manifest: pb.PayloadManifest, pieces: list[tuple[int, bytes]]
) -> Iterator[pb.PayloadChunk]:
    yield pb.PayloadChunk(protocol_version=PROTOCOL_VERSION, payload_id="p", manifest=manifest)
    for offset, data in pieces:
        yield pb.PayloadChunk(payload_id="p", offset=offset, data=data)


def _assemble(chunks: Iterator[pb.PayloadChunk], path: Path | None) -> Any:
    assembler = PayloadAssembler(path=path, limit=LIMIT)
    try:
        for chunk in chunks:
            assembler.feed(chunk)
        return assembler.finish().arrays()
    finally:
        assembler.close()


# -- honest payloads --------------------------------------------------------------------------


@SETTINGS
@given(arrays=ARRAYS, chunk_size=st.integers(1, 300), to_file=st.booleans())
def test_an_honest_payload_round_trips_through_any_chunking(tmp_path, arrays, chunk_size, to_file):
    payload = encode_arrays(arrays)
    path = tmp_path / "in.bin" if to_file else None

    decoded = _assemble(iter_chunks("p", payload, chunk_size=chunk_size), path)

    assert list(decoded) == list(arrays)
    for name, array in arrays.items():
        np.testing.assert_array_equal(decoded[name], array)
        assert decoded[name].dtype == array.dtype and decoded[name].shape == array.shape


# -- hostile streams ------------------------------------------------------------------------


@SETTINGS
@given(
    manifest=MANIFESTS,
    pieces=st.lists(st.tuples(st.integers(0, 2 * LIMIT), st.binary(max_size=600)), max_size=5),
    to_file=st.booleans(),
)
def test_any_chunk_stream_ends_in_arrays_or_our_error_within_the_accepted_size(
    tmp_path, manifest, pieces, to_file
):
    path = tmp_path / "in.bin" if to_file else None

    outcome, peak = _peak_bytes(lambda: _assemble(_hostile_chunks(manifest, pieces), path))

    accepted = manifest.total_bytes if manifest.total_bytes <= LIMIT else 0
    assert peak <= accepted + SLACK, (peak, manifest.total_bytes)
    if not isinstance(outcome, FedloomError):
        assert sum(len(d) for _, d in pieces) >= manifest.total_bytes


@SETTINGS
@given(manifest=MANIFESTS, buffer=st.binary(max_size=2048))
def test_any_manifest_over_any_buffer_decodes_or_raises_our_error(manifest, buffer):
    outcome, _ = _peak_bytes(lambda: decode_arrays(manifest, buffer))

    if not isinstance(outcome, FedloomError):
        assert all(int(a.nbytes) <= len(buffer) for a in outcome.values())


@SETTINGS
@given(
    arrays=ARRAYS,
    cut=st.integers(0, 10_000),
    flip=st.none() | st.tuples(st.integers(0, 10_000), st.integers(1, 255)),
)
def test_a_damaged_payload_file_in_its_data_reads_or_raises_our_error_within_its_size(
    tmp_path, arrays, cut, flip
):
    path = tmp_path / "payload.bin"
    write_payload_file(path, arrays)
    data = bytearray(path.read_bytes())
    header = 16 + len(encode_arrays(arrays).manifest.SerializeToString())
    # Damage after the manifest (the manifest's own damage is covered below).
    data = data[: header + cut]
    if flip is not None and header + flip[0] < len(data):
        data[header + flip[0]] ^= flip[1]
    path.write_bytes(bytes(data))

    outcome, peak = _peak_bytes(lambda: read_payload_file(path).arrays())

    assert peak <= len(data) + SLACK
    if not isinstance(outcome, FedloomError):
        assert list(outcome) == list(arrays)


# -- regressions: inputs that once escaped payload.py's own errors -------------------------------


def _comma_dtype_manifest() -> pb.PayloadManifest:
    spec = pb.ArraySpec(name="a", dtype=",", shape=[1], offset=0, nbytes=1)
    return pb.PayloadManifest(arrays=[spec], total_bytes=1)


def _overflowing_shape_manifest() -> pb.PayloadManifest:
    # 2**32 * 2**32 elements wrap to 0 in int64, matching nbytes = 0.
    spec = pb.ArraySpec(name="a", dtype="<f4", shape=[2**32, 2**32], offset=0, nbytes=0)
    return pb.PayloadManifest(arrays=[spec], total_bytes=0)


def test_a_dtype_numpy_cannot_parse_is_a_payload_error():
    with pytest.raises(FedloomError):
        decode_arrays(_comma_dtype_manifest(), b"x")


def test_a_shape_whose_element_count_overflows_is_a_payload_error():
    with pytest.raises(FedloomError):
        decode_arrays(_overflowing_shape_manifest(), b"")


def test_a_payload_file_with_a_corrupt_manifest_is_a_payload_error(tmp_path):
    path = tmp_path / "payload.bin"
    path.write_bytes(b"FLPAYLD1" + (8).to_bytes(8, "little") + b"\xff" * 8)
    with pytest.raises(FedloomError):
        read_payload_file(path)


def test_a_payload_file_header_declaring_a_huge_manifest_allocates_nothing_of_it(tmp_path):
    path = tmp_path / "payload.bin"
    path.write_bytes(b"FLPAYLD1" + (256 << 20).to_bytes(8, "little") + b"x" * 10)

    outcome, peak = _peak_bytes(lambda: read_payload_file(path))

    assert isinstance(outcome, FedloomError)
    assert peak <= SLACK, peak


# -- the finiteness scan of a payload as it arrives (PayloadAssembler(scan_finite=True)) ------

FLOATS = st.sampled_from([np.float32, np.float64, np.float16])
FLOAT_ARRAYS = st.dictionaries(
    st.text(min_size=1, max_size=8),
    hnp.arrays(
        FLOATS | NUMERIC,
        hnp.array_shapes(min_dims=0, max_dims=2, max_side=9),
        elements={"allow_nan": True, "allow_infinity": True},
    ),
    max_size=4,
)


def _proven_by_streaming(chunks: Iterator[pb.PayloadChunk], path: Path | None) -> Any:
    assembler = PayloadAssembler(path=path, limit=LIMIT, scan_finite=True)
    try:
        for chunk in chunks:
            assembler.feed(chunk)
        payload = assembler.finish()
        return payload.arrays(), payload.finite.get(pb.PAYLOAD_SECTION_UNSPECIFIED, frozenset())
    finally:
        assembler.close()


def _finite(array: np.ndarray) -> bool:
    return array.dtype.kind not in "fc" or bool(np.isfinite(array).all())


@SETTINGS
@given(arrays=FLOAT_ARRAYS, chunk_size=st.integers(1, 300), to_file=st.booleans())
def test_a_streamed_scan_proves_exactly_the_finite_float_arrays_of_an_honest_payload(
    tmp_path, arrays, chunk_size, to_file
):
    payload = encode_arrays(arrays)
    path = tmp_path / "in.bin" if to_file else None

    decoded, proven = _proven_by_streaming(iter_chunks("p", payload, chunk_size=chunk_size), path)

    floats = {name for name, a in arrays.items() if a.dtype.kind in "fc"}
    finite = {name for name in floats if _finite(arrays[name])}
    assert proven <= finite  # never a non-finite one, whatever the chunking
    if chunk_size % 8 == 0:  # no element split across chunks: every finite one is proven
        # (but for float64 a chunk's finite values may sum to infinity: the full scan decides)
        assert {n for n in finite if arrays[n].dtype.itemsize < 8} <= proven
    for name in proven:
        assert _finite(decoded[name])


@st.composite
def _overlapping_float_payloads(draw: Any) -> tuple[pb.PayloadManifest, bytes]:
    """A payload whose float arrays lie anywhere in its bytes, overlapping each other."""
    data = draw(st.binary(min_size=1, max_size=400))
    specs = []
    for index in range(draw(st.integers(1, 4))):
        dtype = np.dtype(draw(st.sampled_from(["<f4", "<f8", "<f2"])))
        offset = draw(st.integers(0, len(data) - 1))
        count = draw(st.integers(0, (len(data) - offset) // dtype.itemsize))
        specs.append(
            pb.ArraySpec(
                name=f"a{index}",
                dtype=dtype.str,
                shape=[count],
                offset=offset,
                nbytes=count * dtype.itemsize,
            )
        )
    return pb.PayloadManifest(arrays=specs, total_bytes=len(data)), data


@SETTINGS
@given(payload=_overlapping_float_payloads(), sizes=st.lists(st.integers(1, 64), min_size=1))
def test_a_lying_payload_never_gets_a_non_finite_array_proven_finite(payload, sizes):
    # A node crafting its upload (overlapping arrays, odd chunk sizes, NaN bit patterns
    # anywhere) must not get a NaN past the researcher's check as "already scanned".
    manifest, data = payload
    pieces, offset = [], 0
    while offset < len(data):
        size = sizes[len(pieces) % len(sizes)]
        pieces.append((offset, data[offset : offset + size]))
        offset += size

    decoded, proven = _proven_by_streaming(_hostile_chunks(manifest, pieces), None)

    for name in proven:
        assert _finite(decoded[name]), (name, decoded[name])
