"""Tensor payloads: named numpy arrays as one manifest plus one raw little-endian buffer.

A payload is encoded once into a contiguous buffer (in memory or in a file) and streamed as
bounded `PayloadChunk`s; decoding yields numpy views over that buffer: no pickle, no
copies. A payload read from a file is streamed with `pread` from the file itself, so
serving it never maps its pages into the sender's memory. Files and reassembly (in memory
or on disk, as chunks arrive) are `common.payload_files`.

Each array belongs to a section of the manifest (`pb.PayloadSection`: parameters, aux-var
arrays, SecAgg-masked sums); names are unique within a section. A single-purpose payload
(a file, a dropout correction) keeps every array in the unspecified section.
"""

from __future__ import annotations

import math
import mmap
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np

from common.chunk_wire import WireChunk
from common.constants import (
    ARRAY_ALIGNMENT,
    CHUNK_SIZE,
    DEFAULT_MAX_PAYLOAD_BYTES,
    PROTOCOL_VERSION,
)
from common.errors import PayloadError
from common.proto import fedloom_pb2 as pb

__all__ = [
    "UNSPECIFIED",
    "EncodedPayload",
    "FileSource",
    "Section",
    "Sections",
    "align_offset",
    "decode_arrays",
    "decode_sections",
    "encode_arrays",
    "encode_sections",
    "iter_chunks",
    "max_payload_bytes",
]

#: A manifest section (`pb.PAYLOAD_SECTION_*`).
Section: TypeAlias = "pb.PayloadSection.ValueType"
#: Arrays by section, then by name.
Sections = Mapping[Section, Mapping[str, np.ndarray]]
UNSPECIFIED: Section = pb.PAYLOAD_SECTION_UNSPECIFIED

#: dtypes allowed on the wire: plain numbers only (object or void dtypes could smuggle code paths).
_ALLOWED_KINDS = frozenset("biuf")


def max_payload_bytes() -> int:
    """Largest payload accepted, from FEDLOOM_MAX_PAYLOAD_BYTES or the default."""
    raw = os.environ.get("FEDLOOM_MAX_PAYLOAD_BYTES")
    return int(raw) if raw else DEFAULT_MAX_PAYLOAD_BYTES


def _wire_dtype(array: np.ndarray) -> np.dtype:
    dtype = array.dtype
    if dtype.kind not in _ALLOWED_KINDS:
        raise PayloadError(f"cannot send an array of dtype {dtype}: only numeric arrays travel")
    return dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype


def align_offset(offset: int) -> int:
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
            offset = align_offset(offset)
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
