"""Tensor payloads: named numpy arrays as one manifest plus one raw little-endian buffer.

A payload is encoded once into a contiguous buffer (in memory or in a file), streamed as
bounded `PayloadChunk`s, and reassembled by `PayloadAssembler`: in memory, into a buffer
that grows with the data received (a manifest alone commits no memory); on disk, written
chunk by chunk with `pwrite` (nothing mapped while it arrives, nothing zero-filled) and
mapped read-only when complete. Decoding yields numpy views over that buffer: no pickle,
no copies. A payload read from a file is streamed with `pread` from the file itself, so
serving it never maps its pages into the sender's memory.

Each array belongs to a section of the manifest (`pb.PayloadSection`: parameters, aux-var
arrays, SecAgg-masked sums); names are unique within a section. A single-purpose payload
(a file, a dropout correction) keeps every array in the unspecified section.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
from google.protobuf.message import DecodeError

from common.chunk_wire import WireChunk
from common.constants import (
    ARRAY_ALIGNMENT,
    CHUNK_SIZE,
    DEFAULT_MAX_PAYLOAD_BYTES,
    PROTOCOL_VERSION,
)
from common.errors import PayloadError
from common.finite import StreamScan
from common.proto import fedloom_pb2 as pb
from common.writeback import fsync_file, write_durably

__all__ = [
    "UNSPECIFIED",
    "EncodedPayload",
    "FileSource",
    "PayloadAssembler",
    "Section",
    "Sections",
    "decode_arrays",
    "decode_sections",
    "encode_arrays",
    "encode_sections",
    "iter_chunks",
    "max_payload_bytes",
    "read_payload_file",
    "write_payload_file",
    "write_sections_file",
]

#: A manifest section (`pb.PAYLOAD_SECTION_*`).
Section: TypeAlias = "pb.PayloadSection.ValueType"
#: Arrays by section, then by name.
Sections = Mapping[Section, Mapping[str, np.ndarray]]
UNSPECIFIED: Section = pb.PAYLOAD_SECTION_UNSPECIFIED

#: dtypes allowed on the wire: plain numbers only (object or void dtypes could smuggle code paths).
_ALLOWED_KINDS = frozenset("biuf")
_FILE_MAGIC = b"FLPAYLD1"
_FILE_HEADER = struct.Struct("<8sQ")


def max_payload_bytes() -> int:
    """Largest payload accepted, from FEDLOOM_MAX_PAYLOAD_BYTES or the default."""
    raw = os.environ.get("FEDLOOM_MAX_PAYLOAD_BYTES")
    return int(raw) if raw else DEFAULT_MAX_PAYLOAD_BYTES


def _wire_dtype(array: np.ndarray) -> np.dtype:
    dtype = array.dtype
    if dtype.kind not in _ALLOWED_KINDS:
        raise PayloadError(f"cannot send an array of dtype {dtype}: only numeric arrays travel")
    return dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype


def _align(offset: int) -> int:
    return (offset + ARRAY_ALIGNMENT - 1) // ARRAY_ALIGNMENT * ARRAY_ALIGNMENT


def build_manifest(sections: Sections) -> pb.PayloadManifest:
    """Lay out every section's arrays in one buffer, each aligned, and describe them."""
    manifest = pb.PayloadManifest()
    offset = 0
    for section, arrays in sections.items():
        if section not in pb.PayloadSection.values():
            raise PayloadError(f"unknown payload section {section}")
        for name, array in arrays.items():
            dtype = _wire_dtype(np.asarray(array))
            offset = _align(offset)
            nbytes = int(np.asarray(array).size) * dtype.itemsize
            manifest.arrays.add(
                name=name,
                dtype=dtype.str,
                shape=list(np.shape(array)),
                offset=offset,
                nbytes=nbytes,
                section=section,
            )
            offset += nbytes
    manifest.total_bytes = offset
    return manifest


def _fill(buffer: Any, manifest: pb.PayloadManifest, sections: Sections) -> None:
    for spec in manifest.arrays:
        src = np.asarray(sections[spec.section][spec.name])
        dst = np.frombuffer(buffer, dtype=np.dtype(spec.dtype), count=src.size, offset=spec.offset)
        np.copyto(dst.reshape(src.shape), src, casting="no" if src.dtype.isnative else "equiv")


@dataclass(frozen=True)
class FileSource:
    """Where a mapped payload's bytes live on disk: the file (by path and inode) and the
    offset of its data, so senders can `pread` them instead of touching the mapping."""

    path: Path
    offset: int
    device: int
    inode: int

    def open(self) -> int | None:
        """A read-only descriptor on the same file, or None if the path now names another."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return None
        stat = os.fstat(fd)
        if (stat.st_dev, stat.st_ino) != (self.device, self.inode):
            os.close(fd)  # replaced since it was mapped (a replayed round): use the mapping
            return None
        return fd


@dataclass(frozen=True)
class EncodedPayload:
    """A manifest and the buffer it describes (bytearray, mmap or memoryview); `source`
    is set when the buffer maps a payload file."""

    manifest: pb.PayloadManifest
    buffer: Any
    source: FileSource | None = None
    #: Names of the float arrays proven finite as the payload arrived, by section
    #: (`PayloadAssembler(scan_finite=True)`); readers scan only the others.
    finite: Mapping[Section, frozenset[str]] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return int(self.manifest.total_bytes)

    def sections(self) -> dict[Section, dict[str, np.ndarray]]:
        """Numpy views over the buffer (no copy), by section then name."""
        return decode_sections(self.manifest, self.buffer)

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays of a single-purpose payload (all in the unspecified section)."""
        return decode_arrays(self.manifest, self.buffer)

    def close(self) -> None:
        """Unmap a file-backed buffer now rather than when it is collected.

        BufferError if arrays over it are still alive: they keep the mapping, which stays
        valid (the payload's own buffer is released either way).
        """
        if isinstance(self.buffer, memoryview) and isinstance(self.buffer.obj, mmap.mmap):
            mapped = self.buffer.obj
            self.buffer.release()
            mapped.close()


def encode_sections(sections: Sections) -> EncodedPayload:
    """Copy every section's arrays once into a fresh contiguous buffer."""
    manifest = build_manifest(sections)
    buffer = bytearray(manifest.total_bytes)
    _fill(buffer, manifest, sections)
    return EncodedPayload(manifest, buffer)


def encode_arrays(arrays: Mapping[str, np.ndarray]) -> EncodedPayload:
    """A single-purpose payload: every array in the unspecified section."""
    return encode_sections({UNSPECIFIED: arrays})


def decode_arrays(manifest: pb.PayloadManifest, buffer: Any) -> dict[str, np.ndarray]:
    """The arrays of a single-purpose payload; PayloadError if it has other sections."""
    sections = decode_sections(manifest, buffer)
    others = sorted(pb.PayloadSection.Name(s) for s in sections if s != UNSPECIFIED)
    if others:
        raise PayloadError(
            f"the payload has sections {others}: read it with sections(), not arrays()"
        )
    return sections.get(UNSPECIFIED, {})


def decode_sections(
    manifest: pb.PayloadManifest, buffer: Any
) -> dict[Section, dict[str, np.ndarray]]:
    """Return numpy views over `buffer` by section, checking every spec against it first."""
    size = len(memoryview(buffer).cast("B")) if not isinstance(buffer, mmap.mmap) else len(buffer)
    if size < manifest.total_bytes:
        raise PayloadError(
            f"truncated payload: {size} bytes received, manifest announces {manifest.total_bytes}"
        )
    out: dict[Section, dict[str, np.ndarray]] = {}
    for spec in manifest.arrays:
        if spec.section not in pb.PayloadSection.values():
            raise PayloadError(f"array {spec.name!r} is in an unknown section {spec.section}")
        try:
            dtype = np.dtype(spec.dtype)
        except (TypeError, ValueError, SyntaxError) as exc:  # numpy parses dtype strings
            raise PayloadError(f"array {spec.name!r} has an unknown dtype {spec.dtype!r}") from exc
        if dtype.kind not in _ALLOWED_KINDS:
            raise PayloadError(f"array {spec.name!r} has a non-numeric dtype {spec.dtype!r}")
        if any(dim < 0 for dim in spec.shape):
            raise PayloadError(f"array {spec.name!r} has a negative dimension {list(spec.shape)}")
        # Python integers: a product wrapping around in int64 could match a lying nbytes.
        count = math.prod(int(dim) for dim in spec.shape)
        if count * dtype.itemsize != spec.nbytes:
            raise PayloadError(
                f"array {spec.name!r}: shape {list(spec.shape)} x {dtype} does not make {spec.nbytes} bytes"
            )
        if spec.offset + spec.nbytes > manifest.total_bytes:
            raise PayloadError(f"array {spec.name!r} runs past the end of the payload")
        section = out.setdefault(spec.section, {})
        if spec.name in section:
            raise PayloadError(f"array {spec.name!r} appears twice in its payload section")
        view = np.frombuffer(buffer, dtype=dtype, count=count, offset=spec.offset)
        section[spec.name] = view.reshape(tuple(spec.shape))
    return out


def iter_chunks(
    payload_id: str, payload: EncodedPayload, chunk_size: int = CHUNK_SIZE
) -> Iterator[WireChunk]:
    """Yield the payload as chunks of at most `chunk_size` bytes, manifest first.

    A payload mapped from a file is read with `pread`: one copy per chunk, and the
    mapping's pages never become this process's resident memory. The data travels beside
    each chunk's message (`common/chunk_wire.py`), never copied into it.
    """
    total = payload.nbytes
    first = pb.PayloadChunk(
        protocol_version=PROTOCOL_VERSION, payload_id=payload_id, manifest=payload.manifest
    )
    if total == 0:
        yield WireChunk(first)
        return
    fd = payload.source.open() if payload.source is not None else None
    try:
        if fd is not None:
            assert payload.source is not None
            base = payload.source.offset

            def read(start: int, stop: int) -> bytes:
                assert fd is not None
                data = os.pread(fd, stop - start, base + start)
                if len(data) != stop - start:
                    raise PayloadError(f"payload file {payload.source} shrank while being sent")
                return data
        else:
            view = (
                memoryview(payload.buffer).cast("B")
                if not isinstance(payload.buffer, mmap.mmap)
                else payload.buffer
            )

            def read(start: int, stop: int) -> bytes:
                return bytes(view[start:stop])

        for start in range(0, total, chunk_size):
            head = first if start == 0 else pb.PayloadChunk(payload_id=payload_id)
            head.offset = start
            yield WireChunk(head, read(start, min(start + chunk_size, total)))
    finally:
        if fd is not None:
            os.close(fd)


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
    fh.write(b"\0" * (_align(fh.tell()) - fh.tell()))


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
        start = _align(_FILE_HEADER.size + length)
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
