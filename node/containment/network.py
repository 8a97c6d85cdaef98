"""Take a process off the network: a new, empty network namespace (loopback down).

Root (or CAP_SYS_ADMIN) can unshare the network namespace directly; an unprivileged user
can where the distribution allows user namespaces (Debian does by default since 11),
mapping its own uid and gid so file access is unchanged. Pipes and already-open files
keep working: only new sockets see the empty namespace.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from node.containment.errors import ContainmentError
from node.containment.syscalls import libc

__all__ = ["leave_network"]

_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000


def _map_own_ids(uid: int, gid: int) -> None:
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
    Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")


def leave_network() -> str:
    """Move this (single-threaded) process to an empty network namespace; says how.

    Raises ContainmentError when neither a privileged nor a user-namespace unshare works.
    """
    if libc.unshare(_CLONE_NEWNET) == 0:
        return "network namespace"
    first = ctypes.get_errno()
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET) == 0:
        try:
            _map_own_ids(uid, gid)
        except OSError as exc:
            raise ContainmentError(f"cannot map ids in the new user namespace: {exc}") from exc
        return "user + network namespace"
    second = ctypes.get_errno()
    raise ContainmentError(
        f"cannot leave the network: unshare(CLONE_NEWNET) failed ({os.strerror(first)}) and "
        f"so did unshare(CLONE_NEWUSER|CLONE_NEWNET) ({os.strerror(second)})"
    )
