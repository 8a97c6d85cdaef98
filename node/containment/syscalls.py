"""The few Linux process controls containment needs, through libc (prctl, unshare, syscall)."""

from __future__ import annotations

import ctypes
import os
import signal

from common.libc import LIBC
from node.containment.errors import ContainmentError

__all__ = ["become_subreaper", "libc", "set_no_new_privs", "set_parent_death_signal"]

libc = LIBC
libc.syscall.restype = ctypes.c_long
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
libc.prctl.restype = ctypes.c_int

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_PR_SET_NO_NEW_PRIVS = 38


def _prctl(option: int, value: int, what: str) -> None:
    if libc.prctl(option, value, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise ContainmentError(f"prctl({what}) failed: {os.strerror(err)}")


def become_subreaper() -> None:
    """Adopt this process's orphaned descendants (even those that setsid or double-fork)."""
    _prctl(_PR_SET_CHILD_SUBREAPER, 1, "PR_SET_CHILD_SUBREAPER")


def set_parent_death_signal(sig: signal.Signals) -> None:
    """Have the kernel send `sig` to this process when its parent dies."""
    _prctl(_PR_SET_PDEATHSIG, int(sig), "PR_SET_PDEATHSIG")


def set_no_new_privs() -> None:
    """Forbid gaining privileges through execve (setuid binaries); required by Landlock."""
    _prctl(_PR_SET_NO_NEW_PRIVS, 1, "PR_SET_NO_NEW_PRIVS")
