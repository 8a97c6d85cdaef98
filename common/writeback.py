"""Start writing a file's pages to disk while the file is still being written.

A durable file (a checkpoint's parameters) used to be written whole into the page cache and
then fsynced: the fsync found every byte dirty and waited for all of it (190 ms of a 100M
model's 330 ms on our VM). Starting the writeback of each slice as soon as it is written
(Linux `sync_file_range(SYNC_FILE_RANGE_WRITE)`, which queues the I/O and returns) lets the
disk work while the rest is copied in, so the closing fsync waits for the last slices only
(write and fsync of 400 MB: 185-213 ms instead of 310-400 ms). The fsync stays the
durability point; where the call does not exist this only costs the wait it would save.
"""

from __future__ import annotations

import ctypes
import os
from typing import IO

from common.libc import libc_function

__all__ = ["WRITEBACK_SLICE", "fsync_file", "write_durably"]

#: Bytes written before their writeback is started: one huge page, so the disk starts
#: almost at once and the closing fsync waits for the last 2 MB or so. Write and fsync of
#: 40 MB took 24 ms (median of 14) against 37 ms with 32 MB slices and 27 ms with 4 MB;
#: of 400 MB, 186 ms against 218 ms (1 MB slices: 24 and 183 ms, for twice the calls).
WRITEBACK_SLICE = 2 << 20

_SYNC_FILE_RANGE_WRITE = 2


# None where the C library has no such call (not Linux).
_START_WRITEBACK = libc_function(
    "sync_file_range", [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
)


def write_durably(fh: IO[bytes], data: memoryview) -> None:
    """Write `data` at `fh`'s position, starting each slice's writeback once it is written.

    The caller fsyncs the file when it is complete; until then nothing is promised.
    """
    view = data.cast("B")
    fh.flush()  # what the buffer holds goes before `data`, at the offsets we track
    fd = fh.fileno()
    for start in range(0, len(view), WRITEBACK_SLICE):
        piece = view[start : start + WRITEBACK_SLICE]
        offset = fh.tell()
        fh.write(piece)
        fh.flush()
        if _START_WRITEBACK is not None:
            # Best effort: an error here only means the fsync will wait for more.
            _START_WRITEBACK(fd, offset, len(piece), _SYNC_FILE_RANGE_WRITE)


def fsync_file(fh: IO[bytes]) -> None:
    """Flush `fh` and wait until its data is on disk."""
    fh.flush()
    os.fsync(fh.fileno())
