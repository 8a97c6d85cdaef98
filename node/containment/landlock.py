"""Landlock through raw syscalls: confine a process's writes and TCP, keep its reads.

Landlock (Linux >= 5.13, listed in the kernel's ``lsm=``) lets an unprivileged process
restrict itself and every process it starts afterwards; nothing can lift it. We handle
only the *write* file-system rights, so reading stays allowed everywhere (plans need the
Python standard library, torch and their dataset), and, from ABI 4 on, TCP bind and
connect with no port allowed. ABI 6 adds scopes: no signal to, and no abstract UNIX
socket of, a process outside the sandbox.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from node.containment.errors import ContainmentError
from node.containment.syscalls import libc, set_no_new_privs

__all__ = ["LandlockReport", "landlock_abi", "restrict_self"]

# Syscall numbers are the same on every architecture (they were added after the tables
# were unified).
_SYS_CREATE_RULESET = 444
_SYS_ADD_RULE = 445
_SYS_RESTRICT_SELF = 446

_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1

# File-system rights (uapi/linux/landlock.h), by the ABI version that introduced them.
_WRITE_FILE = 1 << 1
_REMOVE_DIR = 1 << 4
_REMOVE_FILE = 1 << 5
_MAKE_CHAR = 1 << 6
_MAKE_DIR = 1 << 7
_MAKE_REG = 1 << 8
_MAKE_SOCK = 1 << 9
_MAKE_FIFO = 1 << 10
_MAKE_BLOCK = 1 << 11
_MAKE_SYM = 1 << 12
_REFER = 1 << 13  # ABI 2: rename or link across directories
_TRUNCATE = 1 << 14  # ABI 3

_WRITES_ABI1 = (
    _WRITE_FILE
    | _REMOVE_DIR
    | _REMOVE_FILE
    | _MAKE_CHAR
    | _MAKE_DIR
    | _MAKE_REG
    | _MAKE_SOCK
    | _MAKE_FIFO
    | _MAKE_BLOCK
    | _MAKE_SYM
)
#: Rights that apply to a regular file (a rule on a file may hold only these).
_FILE_RIGHTS = _WRITE_FILE | _TRUNCATE

_NET_BIND_TCP = 1 << 0  # ABI 4
_NET_CONNECT_TCP = 1 << 1
_SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
_SCOPE_SIGNAL = 1 << 1

#: First ABI version with TCP rules, and with scopes.
NET_ABI = 4
SCOPE_ABI = 6


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


@dataclass(frozen=True)
class LandlockReport:
    """What a `restrict_self` call confined."""

    abi: int
    writes: bool
    tcp: bool
    scoped: bool


def _long(value: int) -> ctypes.c_long:
    # syscall(2) reads every argument as a long: a plain int in a variadic call may leave
    # the register's upper half undefined on some architectures.
    return ctypes.c_long(value)


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 when Landlock is absent or disabled."""
    version = libc.syscall(
        _long(_SYS_CREATE_RULESET), None, _long(0), _long(_CREATE_RULESET_VERSION)
    )
    return max(int(version), 0)


def _write_rights(abi: int) -> int:
    rights = _WRITES_ABI1
    if abi >= 2:
        rights |= _REFER
    if abi >= 3:
        rights |= _TRUNCATE
    return rights


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise ContainmentError(f"Landlock {what} failed: {os.strerror(err)} (errno {err})")
    return result


def restrict_self(
    writable_dirs: Sequence[Path],
    writable_files: Sequence[Path] = (),
    *,
    deny_tcp: bool = True,
) -> LandlockReport:
    """Confine this process (and its future children) to writing under `writable_dirs`.

    `writable_files` may be written but not replaced (``/dev/null``). With `deny_tcp` and
    ABI >= 4, no TCP bind or connect is allowed. The calling process must be
    single-threaded (a fork): Landlock applies to the calling thread only. Raises
    ContainmentError when Landlock is unavailable or a path cannot be opened.
    """
    abi = landlock_abi()
    if abi < 1:
        raise ContainmentError(
            "this kernel has no Landlock (Linux >= 5.13 with landlock in its lsm= list)"
        )
    rights = _write_rights(abi)
    tcp = deny_tcp and abi >= NET_ABI
    scoped = abi >= SCOPE_ABI
    attr = _RulesetAttr(
        handled_access_fs=rights,
        handled_access_net=(_NET_BIND_TCP | _NET_CONNECT_TCP) if tcp else 0,
        scoped=(_SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL) if scoped else 0,
    )
    # Older kernels know a shorter struct; they refuse unknown trailing bytes only if set.
    size = 24 if scoped else 16 if abi >= NET_ABI else 8
    ruleset = _check(
        libc.syscall(_long(_SYS_CREATE_RULESET), ctypes.byref(attr), _long(size), _long(0)),
        "create_ruleset",
    )
    try:
        for path, allowed in [(d, rights) for d in writable_dirs] + [
            (f, rights & _FILE_RIGHTS) for f in writable_files
        ]:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError as exc:
                raise ContainmentError(f"cannot open {path} for a Landlock rule: {exc}") from exc
            try:
                rule = _PathBeneathAttr(allowed_access=allowed, parent_fd=fd)
                _check(
                    libc.syscall(
                        _long(_SYS_ADD_RULE),
                        _long(ruleset),
                        _long(_RULE_PATH_BENEATH),
                        ctypes.byref(rule),
                        _long(0),
                    ),
                    f"add_rule for {path}",
                )
            finally:
                os.close(fd)
        set_no_new_privs()
        _check(libc.syscall(_long(_SYS_RESTRICT_SELF), _long(ruleset), _long(0)), "restrict_self")
    finally:
        os.close(ruleset)
    return LandlockReport(abi=abi, writes=True, tcp=tcp, scoped=scoped)
