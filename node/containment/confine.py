"""Apply a task's limits to the training process itself, before any plan code runs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from common.proto import fedloom_pb2 as pb
from node.containment.errors import ContainmentError
from node.containment.landlock import NET_ABI, landlock_abi, restrict_self
from node.containment.memory import limit_address_space, prefer_oom_kill
from node.containment.network import leave_network

__all__ = ["confine_process"]

#: Files any process may write without storing anything: a plan (or a library it uses)
#: may send output there.
HARMLESS_FILES = (Path("/dev/null"),)


def confine_process(limits: pb.WorkerLimits, writable_dirs: Sequence[Path]) -> list[str]:
    """Confine this single-threaded process as `limits` says; returns what was applied.

    Order matters: the network and Landlock need /proc and a few allocations, so the
    memory cap comes last. Raises ContainmentError when a requested limit cannot be
    applied: the task must then fail rather than run unconfined.
    """
    applied: list[str] = []
    prefer_oom_kill()
    if limits.isolate_network:
        try:
            applied.append(leave_network())
        except ContainmentError:
            # Landlock's TCP rules, applied below, are the fallback where they exist.
            if not (limits.confine_writes and landlock_abi() >= NET_ABI):
                raise
    if limits.confine_writes:
        report = restrict_self(writable_dirs, HARMLESS_FILES, deny_tcp=limits.isolate_network)
        applied.append(f"Landlock ABI {report.abi} (writes{', TCP' if report.tcp else ''})")
    if limits.max_memory_bytes:
        cap = limit_address_space(limits.max_memory_bytes)
        applied.append(f"address space {cap // (1024 * 1024)} MB")
    return applied
