"""Payload codec: arrays round-trip through chunks; malformed, truncated and oversized payloads are refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.constants import ARRAY_ALIGNMENT, PROTOCOL_VERSION
from common.errors import PayloadError, ProtocolVersionError
from common.page_release import release_file_pages
from common.payload import decode_arrays, encode_arrays, iter_chunks
from common.payload_files import PayloadAssembler, read_payload_file, write_payload_file
from common.proto import fedloom_pb2 as pb
from tests.resident_memory import rss_file_bytes


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "param/w": rng.normal(size=(17, 5)).astype(np.float32),
        "param/b": rng.normal(size=(5,)).astype(np.float64),
        "aux/count": np.array(3, dtype=np.int64),
        "aux/mask": rng.integers(0, 2**63, size=11, dtype=np.uint64),
        "empty": np.zeros((0, 4), dtype=np.float32),
    }


def _assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert list(got) == list(want)
    for name, value in want.items():
        assert got[name].dtype == value.dtype and got[name].shape == value.shape
        np.testing.assert_array_equal(got[name], value)


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1 << 20])
def test_arrays_round_trip_through_chunks_of_any_size(chunk_size: int) -> None:
    arrays = _arrays()
    assembler = PayloadAssembler()
    for chunk in iter_chunks("p1", encode_arrays(arrays), chunk_size=chunk_size):
        assert len(chunk.data) <= chunk_size
        assembler.feed(chunk)
    _assert_same(assembler.finish().arrays(), arrays)


def test_arrays_are_aligned_in_the_buffer() -> None:
    payload = encode_arrays(_arrays())
    assert all(spec.offset % ARRAY_ALIGNMENT == 0 for spec in payload.manifest.arrays)


def test_file_backed_assembly_and_payload_files_round_trip(tmp_path: Path) -> None:
    arrays = _arrays()
    write_payload_file(tmp_path / "a.bin", arrays)
    source = read_payload_file(tmp_path / "a.bin")
    assembler = PayloadAssembler(path=tmp_path / "b.bin")
    for chunk in iter_chunks("p2", source, chunk_size=13):
        assembler.feed(chunk)
    _assert_same(assembler.finish().arrays(), arrays)
    _assert_same(read_payload_file(tmp_path / "b.bin").arrays(), arrays)


def test_file_payloads_stream_through_pread_and_never_become_resident(tmp_path: Path) -> None:
    """A published round file or a node's reply file is served without mapping its pages,
    and file assembly writes without mapping either: the sender and the receiver keep
    neither payload in resident memory."""
    big = {"w": np.arange(16 << 20, dtype=np.float32)}  # 64 MiB
    write_payload_file(tmp_path / "big.bin", big)
    source = read_payload_file(tmp_path / "big.bin")
    before = rss_file_bytes()
    assembler = PayloadAssembler(path=tmp_path / "copy.bin")
    for chunk in iter_chunks("big", source):
        assembler.feed(chunk)
    grown = rss_file_bytes() - before
    assert grown < 16 << 20, f"streaming a 64 MiB file payload mapped {grown >> 20} MiB"
    np.testing.assert_array_equal(assembler.finish().arrays()["w"], big["w"])


def test_pages_of_a_fully_read_payload_file_can_be_released_and_read_again(
    tmp_path: Path,
) -> None:
    big = {"w": np.arange(16 << 20, dtype=np.float32), "small": np.ones(3)}
    write_payload_file(tmp_path / "big.bin", big)
    mapped = read_payload_file(tmp_path / "big.bin").arrays()
    before = rss_file_bytes()
    assert float(mapped["w"][::1024].sum()) > 0  # touches every page
    assert rss_file_bytes() - before > 48 << 20
    release_file_pages({**mapped, "heap": np.zeros(4)})  # heap arrays are left alone
    assert rss_file_bytes() - before < 16 << 20
    np.testing.assert_array_equal(mapped["w"], big["w"])  # read back from the page cache


def test_checking_and_folding_a_mapped_upload_keeps_one_window_of_it_resident(
    tmp_path: Path,
) -> None:
    from common.finite import WINDOW, all_finite
    from researcher.aggregators import FedAverage

    n = 6 * WINDOW + 12345  # 200 MB of float32, not a whole number of windows
    upload = {"w": np.linspace(-1, 1, n, dtype=np.float32)}
    write_payload_file(tmp_path / "upload.bin", upload)
    mapped = read_payload_file(tmp_path / "upload.bin").arrays()
    window_bytes = WINDOW * 4
    before = rss_file_bytes()
    assert all_finite(mapped["w"])  # reads every page of it
    assert rss_file_bytes() - before < 2 * window_bytes
    agg = FedAverage()
    agg.start({"w": np.zeros(n, np.float32)})
    agg.add("n1", mapped, 2.0)
    assert rss_file_bytes() - before < 2 * window_bytes
    agg.add("n2", {"w": np.ones(n, np.float32)}, 1.0)  # heap arrays: nothing to release
    result = agg.finish()["w"]
    np.testing.assert_allclose(
        result[:: 1 << 16], ((2 * upload["w"] + 1) / 3)[:: 1 << 16], rtol=1e-6
    )
    assert float(mapped["w"][-1]) == 1.0  # the mapping still reads back from the page cache


def test_a_file_replaced_after_mapping_is_still_served_from_its_mapping(tmp_path: Path) -> None:
    old, new = {"w": np.ones(1000, np.float32)}, {"w": np.zeros(1000, np.float32)}
    write_payload_file(tmp_path / "round.bin", old)
    published = read_payload_file(tmp_path / "round.bin")
    write_payload_file(tmp_path / "round.bin", new)  # a replayed round rewrites the name
    assembler = PayloadAssembler()
    for chunk in iter_chunks("r", published, chunk_size=1000):
        assembler.feed(chunk)
    np.testing.assert_array_equal(assembler.finish().arrays()["w"], old["w"])


def test_truncated_stream_is_refused_with_the_byte_counts() -> None:
    chunks = list(iter_chunks("p3", encode_arrays(_arrays()), chunk_size=32))
    assembler = PayloadAssembler()
    for chunk in chunks[:-1]:
        assembler.feed(chunk)
    with pytest.raises(PayloadError, match="truncated payload"):
        assembler.finish()


def test_out_of_order_or_overflowing_chunks_are_refused() -> None:
    chunks = list(iter_chunks("p4", encode_arrays(_arrays()), chunk_size=32))
    assembler = PayloadAssembler()
    assembler.feed(chunks[0])
    with pytest.raises(PayloadError, match="expected"):
        assembler.feed(chunks[2])
    big = pb.PayloadChunk(payload_id="p4", offset=32, data=b"x" * 10_000)
    with pytest.raises(PayloadError, match="overflows"):
        assembler.feed(big)


def test_oversized_payload_is_refused_before_allocating() -> None:
    manifest = pb.PayloadManifest(total_bytes=1 << 40)
    first = pb.PayloadChunk(protocol_version=PROTOCOL_VERSION, payload_id="huge", manifest=manifest)
    with pytest.raises(PayloadError, match="FEDLOOM_MAX_PAYLOAD_BYTES"):
        PayloadAssembler(limit=1 << 30).feed(first)


def test_first_chunk_without_manifest_or_wrong_version_is_refused() -> None:
    with pytest.raises(PayloadError, match="manifest"):
        PayloadAssembler().feed(
            pb.PayloadChunk(protocol_version=PROTOCOL_VERSION, payload_id="x", data=b"1")
        )
    with pytest.raises(ProtocolVersionError, match="same fedloom version"):
        PayloadAssembler().feed(
            pb.PayloadChunk(protocol_version=PROTOCOL_VERSION + 1, payload_id="x")
        )


def test_manifest_lies_are_refused() -> None:
    good = encode_arrays({"w": np.zeros(4, dtype=np.float32)})
    bad_size = pb.PayloadManifest()
    bad_size.CopyFrom(good.manifest)
    bad_size.arrays[0].shape[:] = [5]
    with pytest.raises(PayloadError, match="does not make"):
        decode_arrays(bad_size, good.buffer)
    bad_dtype = pb.PayloadManifest()
    bad_dtype.CopyFrom(good.manifest)
    bad_dtype.arrays[0].dtype = "|O"
    with pytest.raises(PayloadError, match="non-numeric"):
        decode_arrays(bad_dtype, good.buffer)
    past_end = pb.PayloadManifest()
    past_end.CopyFrom(good.manifest)
    past_end.arrays[0].offset = 8
    with pytest.raises(PayloadError, match="past the end"):
        decode_arrays(past_end, good.buffer)


def test_object_arrays_cannot_be_sent() -> None:
    with pytest.raises(PayloadError, match="only numeric"):
        encode_arrays({"x": np.array([object()])})


def test_big_endian_input_is_sent_little_endian() -> None:
    value = np.arange(6, dtype=">f4")
    decoded = encode_arrays({"x": value}).arrays()["x"]
    assert decoded.dtype.str == "<f4"
    np.testing.assert_array_equal(decoded, value)


def test_sections_keep_same_names_apart_and_round_trip_through_files(tmp_path: Path) -> None:
    from common.payload import encode_sections
    from common.payload_files import read_payload_file, write_sections_file

    sections = {
        pb.PAYLOAD_SECTION_PARAMS: {"w": np.arange(6, dtype=np.float32).reshape(2, 3)},
        pb.PAYLOAD_SECTION_AUX: {"w": np.ones(4)},  # the same name in another section
    }
    for payload in (
        encode_sections(sections),
        (write_sections_file(tmp_path / "p.bin", sections), read_payload_file(tmp_path / "p.bin"))[
            1
        ],
    ):
        got = payload.sections()
        assert set(got) == set(sections)
        for section, arrays in sections.items():
            for name, value in arrays.items():
                np.testing.assert_array_equal(got[section][name], value)
        with pytest.raises(PayloadError, match="read it with sections"):
            payload.arrays()


def test_unknown_section_and_duplicate_name_within_a_section_are_refused() -> None:
    from common.payload import decode_sections, encode_sections

    payload = encode_sections({pb.PAYLOAD_SECTION_PARAMS: {"w": np.zeros(2)}})
    manifest = pb.PayloadManifest()
    manifest.CopyFrom(payload.manifest)
    manifest.arrays[0].section = 99  # type: ignore[assignment]
    with pytest.raises(PayloadError, match="unknown section"):
        decode_sections(manifest, payload.buffer)
    manifest.CopyFrom(payload.manifest)
    manifest.arrays.add().CopyFrom(manifest.arrays[0])
    with pytest.raises(PayloadError, match="twice in its payload section"):
        decode_sections(manifest, payload.buffer)
