"""Backing the warm process's memory with huge pages, so that forking it costs less.

Every task forks the warm process twice (its supervisor, then the plan process) and both
forks exit. Fork copies a page-table entry per resident 4 kB page and exit drops each of
them again: with torch, scikit-learn and declearn imported, about 310 MB of private
memory, 80,000 entries, each time. `collapse_private_memory` asks the kernel to move that
memory into 2 MB pages (`MADV_COLLAPSE`, Linux >= 6.1), one entry per 2 MB. A fork then
shares those pages whole; a child that writes to one gets a private copy of only the 4 kB
it wrote, as before. On our 2-core VM a fork-and-exit of the warm process went from
10-12 ms to 5-7 ms, and a 100k-parameter round from 0.13-0.15 s to 0.11-0.12 s (README,
Benchmarks).

Best effort: an older kernel, a region the kernel will not collapse, or no 2 MB pages to
spare leave the memory as it was.
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

from common.libc import libc_function

__all__ = ["HUGE_PAGE_BYTES", "collapse_private_memory", "private_regions"]

log = logging.getLogger(__name__)

#: The size of a transparent huge page on x86-64 and most arm64 kernels.
HUGE_PAGE_BYTES = 2 << 20

#: madvise(MADV_COLLAPSE), Linux >= 6.1 (Python's mmap module does not name it).
_MADV_COLLAPSE = 25


def private_regions(maps_text: str) -> list[tuple[int, int]]:
    """(start, end) of the whole 2 MB pages inside each private writable anonymous mapping
    (the heap and unnamed mappings) of a /proc/<pid>/maps text."""
    regions = []
    for line in maps_text.splitlines():
        fields = line.split()
        perms = fields[1]
        name = fields[5] if len(fields) > 5 else ""
        if not (perms.startswith("rw") and perms[3] == "p" and name in ("", "[heap]")):
            continue
        low, high = (int(bound, 16) for bound in fields[0].split("-"))
        start = -(-low // HUGE_PAGE_BYTES) * HUGE_PAGE_BYTES
        end = high // HUGE_PAGE_BYTES * HUGE_PAGE_BYTES
        if end > start:
            regions.append((start, end))
    return regions


def collapse_private_memory() -> int:
    """Collapse this process's private anonymous memory into huge pages; returns the bytes
    of the regions the kernel collapsed."""
    madvise = libc_function("madvise", [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int])
    if madvise is None:
        return 0
    collapsed = 0
    for start, end in private_regions(Path("/proc/self/maps").read_text()):
        # Fails (EINVAL, EAGAIN, ENOMEM) for a region with pinned or special pages, on
        # kernels without MADV_COLLAPSE, or when no huge page is free: it stays as it is.
        if madvise(start, end - start, _MADV_COLLAPSE) == 0:
            collapsed += end - start
    log.debug("collapsed %d MB of the warm process into huge pages", collapsed >> 20)
    return collapsed
