"""Payload files and reassembly: the on-disk form of a payload, and chunks put back together.

A payload file is a small header (magic, manifest length), the manifest, then the raw buffer
at an aligned offset: `write_sections_file` writes one from arrays (optionally durable),
`read_payload_file` maps one (read-only, or writable for a plan training in it). A
`PayloadAssembler` rebuilds a streamed payload in memory or straight into such a file.
The codec itself (manifests, views, chunks) is `common.payload`.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from common.chunk_wire import WireChunk
from common.constants import PROTOCOL_VERSION
from common.errors import PayloadError
from common.finite import StreamScan
from common.payload import (
    UNSPECIFIED,
    EncodedPayload,
    FileSource,
    Sections,
    align_offset,
    build_manifest,
    decode_sections,
    max_payload_bytes,
)
from common.proto import fedloom_pb2 as pb
from common.writeback import fsync_file, write_durably

__all__ = ["PayloadAssembler", "read_payload_file", "write_payload_file", "write_sections_file"]

_FILE_MAGIC = b"FLPAYLD1"
_FILE_HEADER = struct.Struct("<8sQ")


class PayloadAssembler:
    """Reassemble chunks into one buffer: in memory, grown chunk by chunk (memory follows the
    bytes actually received, never the size a manifest claims); or into a file when `path`
    is set, written with `pwrite` as chunks come (no mapping, no zero-fill) and mapped
    read-only by `finish`. With `scan_finite`, each chunk's float values are summed as it
    comes (common.finite.StreamScan) and the payload says which arrays are finite."""

    def __init__(
        self, *, path: Path | None = None, limit: int | None = None, scan_finite: bool = False
    ) -> None:
        self._path = path
        self._limit = max_payload_bytes() if limit is None else limit
        self._scan_finite = scan_finite
        self._scan: StreamScan | None = None
        self._buffer: Any = None
        self._fd: int | None = None
        self._data_start = 0
        self.manifest: pb.PayloadManifest | None = None
        self.payload_id = ""
        self.received = 0

    def feed(self, chunk: WireChunk | pb.PayloadChunk) -> None:
        """Copy one chunk in place; the first chunk must carry the manifest."""
        head, data = (
            (chunk.head, chunk.data) if isinstance(chunk, WireChunk) else (chunk, chunk.data)
        )
        if self.manifest is None:
            self._start(head)
        elif head.payload_id and head.payload_id != self.payload_id:
            raise PayloadError(
                f"chunk for payload {head.payload_id!r} arrived inside payload {self.payload_id!r}"
            )
        if not len(data):
            return
        if head.offset != self.received:
            raise PayloadError(
                f"payload {self.payload_id!r}: chunk at byte {head.offset}, expected {self.received}"
            )
        end = head.offset + len(data)
        assert self.manifest is not None
        if end > self.manifest.total_bytes:
            raise PayloadError(
                f"payload {self.payload_id!r} overflows its manifest "
                f"({end} > {self.manifest.total_bytes} bytes)"
            )
        if self._fd is None:
            self._buffer += data  # chunks arrive in order (checked above): append
        else:
            _pwrite_all(self._fd, data, self._data_start + head.offset)
        if self._scan is not None:
            self._scan.feed(head.offset, data)
        self.received = end

    def _start(self, chunk: pb.PayloadChunk) -> None:
        if chunk.protocol_version != PROTOCOL_VERSION:
            from common.errors import ProtocolVersionError

            raise ProtocolVersionError(
                f"payload speaks protocol {chunk.protocol_version}, this peer speaks "
                f"{PROTOCOL_VERSION}: install the same fedloom version on both sides"
            )
        if not chunk.HasField("manifest"):
            raise PayloadError("the first chunk of a payload must carry its manifest")
        total = int(chunk.manifest.total_bytes)
        if total > self._limit:
            raise PayloadError(
                f"payload of {total} bytes exceeds the limit of {self._limit} bytes: "
                "raise FEDLOOM_MAX_PAYLOAD_BYTES on the receiving side if this is expected"
            )
        self.manifest = chunk.manifest
        self.payload_id = chunk.payload_id
        if self._scan_finite:
            self._scan = StreamScan(chunk.manifest)
        if self._path is None:
            self._buffer = bytearray()
        else:
            with open(self._path, "wb") as fh:
                _write_header(fh, chunk.manifest)
                self._data_start = fh.tell()
            self._fd = os.open(self._path, os.O_WRONLY)

    def finish(self) -> EncodedPayload:
        """Check completeness and return the payload (file-backed payloads are closed and
        mapped read-only)."""
        if self.manifest is None:
            raise PayloadError("empty payload stream: no manifest was received")
        if self.received != self.manifest.total_bytes:
            self.close()
            raise PayloadError(
                f"truncated payload {self.payload_id!r}: received {self.received} of "
                f"{self.manifest.total_bytes} bytes"
            )
        finite = self._scan.proven() if self._scan is not None else {}
        if self._fd is not None:
            self.close()
            assert self._path is not None
            return replace(read_payload_file(self._path), finite=finite)  # specs checked
        decode_sections(self.manifest, self._buffer)  # validate specs before anyone uses them
        return EncodedPayload(self.manifest, self._buffer, finite=finite)

    def close(self) -> None:
        """Close a file-backed payload's file (what was written stays on disk)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _write_header(fh: Any, manifest: pb.PayloadManifest) -> None:
    raw = manifest.SerializeToString()
    fh.write(_FILE_HEADER.pack(_FILE_MAGIC, len(raw)))
    fh.write(raw)
    fh.write(b"\0" * (align_offset(fh.tell()) - fh.tell()))


def write_payload_file(
    path: Path, arrays: Mapping[str, np.ndarray], *, durable: bool = False
) -> pb.PayloadManifest:
    """Write a single-purpose payload file (every array in the unspecified section)."""
    return write_sections_file(path, {UNSPECIFIED: arrays}, durable=durable)


def write_sections_file(
    path: Path, sections: Sections, *, durable: bool = False
) -> pb.PayloadManifest:
    """Write a payload file: header, manifest, then the aligned raw buffer.

    `durable`: on disk (fsynced) before it takes `path`'s name, its writeback started as
    it is written so the fsync waits for little (common/writeback.py); the caller syncs
    the directory if the name must survive a crash too.
    """
    manifest = build_manifest(sections)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as fh:
        _write_header(fh, manifest)
        start = fh.tell()
        # Plain writes from the arrays: no mapping of the file, whose dirty pages would count
        # as the writer's resident memory, and no staging buffer.
        for spec in manifest.arrays:
            src = np.asarray(sections[spec.section][spec.name])
            src = np.ascontiguousarray(src.astype(np.dtype(spec.dtype), copy=False))
            fh.write(b"\0" * (start + spec.offset - fh.tell()))
            if durable:
                write_durably(fh, src.data)
            else:
                fh.write(src.data)
        fh.truncate(start + manifest.total_bytes)
        if durable:
            fsync_file(fh)
    os.replace(tmp, path)
    return manifest


#: madvise(MADV_POPULATE_WRITE), Linux >= 5.14 (Python's mmap module does not name it).
_MADV_POPULATE_WRITE = 23


def _populate_for_writing(mapped: mmap.mmap) -> None:
    """Map every page writable now, in one call, rather than one write fault per 4 kB page
    as the arrays are first written (10,000 faults for a 40 MB model, inside training)."""
    try:
        mapped.madvise(_MADV_POPULATE_WRITE)
    except OSError:
        pass  # an older kernel: the pages fault in as they are written


def read_payload_file(path: Path, *, writable: bool = False) -> EncodedPayload:
    """Map a payload file read-only; arrays are views over the mapping.

    `writable`: a shared mapping whose arrays write through to the file (a plan training
    in the downloaded global model, which then is its reply).
    """
    with open(path, "r+b" if writable else "rb") as fh:
        head = fh.read(_FILE_HEADER.size)
        if len(head) != _FILE_HEADER.size:
            raise PayloadError(f"{path} is not a fedloom payload file (too short)")
        magic, length = _FILE_HEADER.unpack(head)
        if magic != _FILE_MAGIC:
            raise PayloadError(f"{path} is not a fedloom payload file (bad magic)")
        size = os.fstat(fh.fileno()).st_size
        if _FILE_HEADER.size + length > size:
            # Checked before reading: a lying header must not make us allocate its length.
            raise PayloadError(
                f"{path} is truncated or corrupt: its header announces a {length}-byte "
                f"manifest in a {size}-byte file"
            )
        manifest = pb.PayloadManifest()
        try:
            manifest.ParseFromString(fh.read(length))
        except DecodeError as exc:
            raise PayloadError(f"{path} has a corrupt manifest: {exc}") from exc
        start = align_offset(_FILE_HEADER.size + length)
        if size < start + manifest.total_bytes:
            raise PayloadError(
                f"{path} is truncated: {size} bytes for {start + manifest.total_bytes}"
            )
        if manifest.total_bytes == 0:
            return EncodedPayload(manifest, bytearray(0))
        access = mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ
        mapped = mmap.mmap(fh.fileno(), start + manifest.total_bytes, access=access)
        if writable:
            _populate_for_writing(mapped)
        stat = os.fstat(fh.fileno())
    buffer = memoryview(mapped)[start:]
    decode_sections(manifest, buffer)  # check every spec against the file before any use
    return EncodedPayload(manifest, buffer, FileSource(path, start, stat.st_dev, stat.st_ino))
