"""Durable payload files: the same bytes as a plain write, on disk before they take their name."""

from __future__ import annotations

import os

import numpy as np

import common.writeback as writeback
from common.payload_files import read_payload_file, write_payload_file, write_sections_file
from common.proto import fedloom_pb2 as pb


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "w": rng.standard_normal((300, 70)).astype(np.float32),
        "b": rng.standard_normal(33).astype(np.float64),
        "n": np.arange(5, dtype=np.int64),
    }


def test_a_durable_file_holds_the_same_bytes_as_a_plain_one(tmp_path, monkeypatch):
    monkeypatch.setattr(writeback, "WRITEBACK_SLICE", 4096)  # many slices per array
    arrays = _arrays()
    write_payload_file(tmp_path / "plain.bin", arrays)
    write_payload_file(tmp_path / "durable.bin", arrays, durable=True)

    assert (tmp_path / "durable.bin").read_bytes() == (tmp_path / "plain.bin").read_bytes()
    back = read_payload_file(tmp_path / "durable.bin").arrays()
    for name, value in arrays.items():
        np.testing.assert_array_equal(back[name], value)


def test_writeback_starts_slice_by_slice_and_the_file_is_synced_before_its_rename(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(writeback, "WRITEBACK_SLICE", 8192)
    started: list[tuple[int, int]] = []
    monkeypatch.setattr(
        writeback,
        "_START_WRITEBACK",
        lambda fd, offset, length, flags: started.append((offset, length)) or 0,
    )
    final = tmp_path / "round.bin"
    synced_while_unnamed: list[bool] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced_while_unnamed.append(not final.exists())
        real_fsync(fd)

    monkeypatch.setattr(writeback.os, "fsync", fsync)
    weights = _arrays()["w"]  # 84,000 bytes: 11 slices
    write_sections_file(final, {pb.PAYLOAD_SECTION_PARAMS: {"w": weights}}, durable=True)

    assert synced_while_unnamed == [True]
    assert [length for _, length in started] == [8192] * 10 + [weights.nbytes - 10 * 8192]
    offsets = [offset for offset, _ in started]
    assert offsets == [offsets[0] + i * 8192 for i in range(11)]
    data = final.read_bytes()[offsets[0] : offsets[0] + weights.nbytes]
    assert data == weights.tobytes()  # the ranges handed to the kernel are the array's


def test_a_plain_write_is_not_synced(tmp_path, monkeypatch):
    calls: list[int] = []
    monkeypatch.setattr(writeback.os, "fsync", calls.append)
    write_payload_file(tmp_path / "scratch.bin", _arrays())
    assert calls == []


def test_linux_starts_writeback_through_libc():
    if os.uname().sysname == "Linux":
        assert writeback._START_WRITEBACK is not None
