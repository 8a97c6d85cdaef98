"""One daemon per node home: an exclusive lock on ``DIR/daemon.lock`` naming its holder.

Two daemons on one home would fight over the researcher connection (same node id), the
registry and the optimizer state. The lock is `flock`ed, so the kernel releases it when
the holder dies, however it dies: a stale file never blocks a restart.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from common.errors import NodeHomeError

__all__ = ["LOCK_FILE", "hold_home_lock"]

LOCK_FILE = "daemon.lock"


def _holder(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError:
        return ""
    return text if text.isdigit() else ""


@contextmanager
def hold_home_lock(home_path: Path) -> Iterator[Path]:
    """Hold the home's daemon lock for the block; NodeHomeError naming the holder's pid if taken."""
    path = Path(home_path) / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _holder(path)
            who = f"process {pid}" if pid else "another process"
            raise NodeHomeError(
                f"node home {home_path} is already served by {who} (`fedloom node start`): "
                f"stop it first{f' (kill {pid})' if pid else ''}, or start this daemon with "
                "another --home"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the lock
