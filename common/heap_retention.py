"""Keep freed heap memory for the next message instead of handing it back to the kernel.

A node daemon moves every model through 1 MiB gRPC messages, several in flight at once.
With glibc's default (dynamic) thresholds, once a few of them are freed the heap's free top
exceeds the trim threshold (twice the largest block recently served by mmap, about 2 MiB)
and is returned to the kernel, so the next messages fault their pages in afresh, 4 kB and a
zero-fill at a time: at 10M parameters, 17,000 page faults per round in each node daemon and
14,000-28,000 in the researcher; with these settings, 6-16 and about 1,100
(bench/round_overhead.py, 3 nodes).

What stays is bounded: one malloc arena for every thread, which keeps at most TRIM_THRESHOLD
free at its top; blocks of MMAP_THRESHOLD or more (model-sized arrays) still get their own
mapping, unmapped when freed. With an arena per thread (glibc's default, up to 8 per core)
each kept its own free memory and the researcher's peak grew by 40 MB over 50 rounds; with
one it grows as before, about 8 MB.
"""

from __future__ import annotations

import ctypes

from common.libc import libc_function

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "retain_freed_heap"]

#: Blocks below this come from the heap (and are reused there): a gRPC message and its
#: buffers, not a model.
MMAP_THRESHOLD = 4 << 20
#: Free memory at the heap's top kept for reuse before any of it is returned to the kernel.
TRIM_THRESHOLD = 16 << 20

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


def retain_freed_heap() -> bool:
    """Set this process's malloc thresholds (fixed, no longer dynamic) and arena count.

    For long-lived processes that stream payloads: the node daemon, and the researcher's
    process once it serves the federation (`get_server`). Threads that already have an arena
    keep it. Returns False, changing nothing, where the C library has no glibc `mallopt`
    (musl, macOS).
    """
    mallopt = libc_function("mallopt", [ctypes.c_int, ctypes.c_int])
    if mallopt is None:
        return False
    # mallopt returns 1 on success, 0 on error.
    return all(
        mallopt(param, value)
        for param, value in (
            (_M_ARENA_MAX, 1),
            (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        )
    )
