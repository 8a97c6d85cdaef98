"""A timeline of a round across processes, for benchmarks: off unless FEDLOOM_TRACE is set.

With ``FEDLOOM_TRACE=/path/trace.jsonl`` in the environment of the researcher and the nodes,
each `span` appends one JSON line ``{"name", "pid", "start", "end", ...fields}`` (wall-clock
seconds, comparable across the processes of one machine) with a single `write` to a file
opened with O_APPEND, so concurrent processes never interleave their lines. The file is
opened when a process's first span starts and kept open, so spans of a confined plan process
(which may not open files outside its box) still reach it. Without FEDLOOM_TRACE a span costs
one dictionary lookup. `bench/round_overhead.py --trace` prints the timeline.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["TRACE_ENV", "span"]

#: Environment variable naming the trace file.
TRACE_ENV = "FEDLOOM_TRACE"


@contextmanager
def span(name: str, **fields: object) -> Iterator[None]:
    """Record how long the body takes as `name` (with `fields`) when tracing is on."""
    path = os.environ.get(TRACE_ENV)
    if not path:
        yield
        return
    fd = _trace_fd(path)
    start = time.time()
    try:
        yield
    finally:
        line = json.dumps(
            {"name": name, "pid": os.getpid(), "start": start, "end": time.time(), **fields}
        )
        os.write(fd, (line + "\n").encode())


#: (pid, path) -> open descriptor: a forked child opens its own on its first span.
_FDS: dict[tuple[int, str], int] = {}


def _trace_fd(path: str) -> int:
    key = (os.getpid(), path)
    fd = _FDS.get(key)
    if fd is None:
        fd = _FDS[key] = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    return fd
