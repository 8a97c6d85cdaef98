"""The training process's memory cap, and what the kernel's OOM killer did.

The cap is an address-space limit (RLIMIT_AS) added to the size the task was forked at:
an allocation beyond it fails inside the plan (MemoryError, or torch's "can't allocate
memory"), which the plan's process reports itself. The OOM killer is another matter: it
SIGKILLs a process when the machine (or its memory cgroup) runs out, and the global
``oom_kill`` counter in /proc/vmstat tells whether it acted during a task.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

__all__ = [
    "DEFAULT_MEMORY_FRACTION",
    "default_memory_limit_mb",
    "limit_address_space",
    "machine_memory_mb",
    "oom_kill_count",
    "prefer_oom_kill",
]

#: Share of the machine's RAM a task may add to its forked size by default: half leaves the
#: daemon, the OS and the node's other work room, while any plan that fits the machine with
#: a margin still runs. Operators change it with --max-memory-mb or [containment].
DEFAULT_MEMORY_FRACTION = 0.5

_MIB = 1024 * 1024


def machine_memory_mb() -> int:
    """Physical RAM of the machine, in MiB."""
    return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // _MIB)


def default_memory_limit_mb() -> int:
    """The default task memory limit: DEFAULT_MEMORY_FRACTION of the machine's RAM."""
    return int(machine_memory_mb() * DEFAULT_MEMORY_FRACTION)


def _address_space_bytes() -> int:
    pages = int(Path("/proc/self/statm").read_text().split()[0])
    return pages * os.sysconf("SC_PAGE_SIZE")


def limit_address_space(extra_bytes: int) -> int:
    """Cap this process's address space at its current size plus `extra_bytes`; returns the cap."""
    limit = _address_space_bytes() + extra_bytes
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    return limit


def prefer_oom_kill() -> None:
    """Make this process the OOM killer's first choice, so the daemon and supervisor survive."""
    try:
        Path("/proc/self/oom_score_adj").write_text("1000")
    except OSError:
        pass  # raising one's own score needs no privilege; a read-only /proc is not fatal


def oom_kill_count() -> int | None:
    """The kernel's count of OOM kills since boot, or None where /proc/vmstat lacks it."""
    try:
        for line in Path("/proc/vmstat").read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == "oom_kill":
                return int(value)
    except (OSError, ValueError):
        return None
    return None
