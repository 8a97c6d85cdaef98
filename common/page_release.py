"""Dropping the pages of read-only file mappings from this process's resident memory.

Payload files (`common.payload_files.read_payload_file`) are mapped read-only; once read, their
pages count as this process's memory until released. Releasing them loses nothing: the
data stays in the file and the page cache, and comes back on the next access.
"""

from __future__ import annotations

import mmap
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["release_file_pages", "release_window"]


def _read_only_mapping(array: np.ndarray) -> mmap.mmap | None:
    """The open, read-only file mapping `array` views, or None (heap arrays, writable maps)."""
    base: Any = array
    while isinstance(base, np.ndarray):
        base = base.base
    mapped = base.obj if isinstance(base, memoryview) else base
    if not isinstance(mapped, mmap.mmap) or mapped.closed:
        return None
    with memoryview(mapped) as view:
        return mapped if view.readonly else None


def release_file_pages(arrays: Mapping[str, np.ndarray]) -> None:
    """Release every mapping that `arrays` view, whole, after a full read of them."""
    seen: set[int] = set()
    for array in arrays.values():
        mapped = _read_only_mapping(array)
        if mapped is not None and id(mapped) not in seen:
            seen.add(id(mapped))
            mapped.madvise(mmap.MADV_DONTNEED)


def release_window(view: np.ndarray) -> None:
    """Release the whole pages that the contiguous `view` covers in its mapping: a reader
    going through a mapped upload window by window keeps one window resident, not the
    upload. Does nothing for arrays that are not views over a read-only mapping."""
    mapped = _read_only_mapping(view)
    if mapped is None or not view.flags.c_contiguous:
        return
    with memoryview(mapped) as whole:
        origin = np.frombuffer(whole, dtype=np.uint8, count=1).ctypes.data
    offset = view.ctypes.data - origin
    start = -(-offset // mmap.PAGESIZE) * mmap.PAGESIZE  # whole pages only: round inward
    end = (offset + view.nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
    if 0 <= start < end <= len(mapped):
        mapped.madvise(mmap.MADV_DONTNEED, start, end - start)
