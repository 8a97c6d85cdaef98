"""Ctrl-C (or SIGTERM) that waits: a round's commit and checkpoint finish before KeyboardInterrupt is raised."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["deferred_interrupts"]

log = logging.getLogger(__name__)

_HELD = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold SIGINT and SIGTERM inside the block and raise KeyboardInterrupt when it ends.

    Only the main thread receives signals; elsewhere the block runs unprotected.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        log.warning("interrupt received: finishing the checkpoint first")

    previous = {signum: signal.signal(signum, hold) for signum in _HELD}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if received:
        raise KeyboardInterrupt
