"""Whether each dataset still matches its registration, re-hashed only when its files moved.

Hashing reads a whole dataset, which for a hospital's data can take minutes; the list page
must not do that on every view. A dataset is re-hashed when the size, modification time or
inode of one of its files changed since its last check (or when the operator asks with
Verify). Content rewritten with the same size and a forged mtime escapes this quick check,
never the node: the daemon re-hashes a dataset before every task it trains on.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from node.datasets import VerifyResult
from node.registry import DatasetRecord, DatasetRegistry

__all__ = ["HashStates"]

Signature = tuple[tuple[str, int, int, int], ...]


def _signature(path: Path) -> Signature | None:
    """Size, mtime and inode of the dataset's file or of every file under its folder."""
    try:
        if path.is_file():
            st = path.stat()
            return (("", st.st_size, st.st_mtime_ns, st.st_ino),)
        entries = []
        for dirpath, _, filenames in os.walk(path):
            for name in filenames:
                st = os.stat(os.path.join(dirpath, name))
                rel = os.path.relpath(os.path.join(dirpath, name), path)
                entries.append((rel, st.st_size, st.st_mtime_ns, st.st_ino))
        return tuple(sorted(entries)) if path.is_dir() else None
    except OSError:
        return None  # missing or unreadable: always verify, which says what is wrong


class HashStates:
    """Last verification of each dataset, keyed by name and registered hash."""

    def __init__(self, db_path: Path) -> None:
        self._registry = DatasetRegistry(db_path)
        self._checked: dict[tuple[str, str], tuple[Signature, VerifyResult]] = {}
        self._lock = threading.Lock()

    def check(self, record: DatasetRecord, *, force: bool = False) -> VerifyResult:
        """The dataset's verification, from the last one when none of its files moved."""
        key = (record.name, record.sha256)
        signature = _signature(Path(record.path))
        with self._lock:
            cached = self._checked.get(key)
        if not force and signature is not None and cached and cached[0] == signature:
            return cached[1]
        result = self._registry.verify(record.name)
        if signature is not None:
            with self._lock:
                self._checked[key] = (signature, result)
        return result

    def check_all(self, records: list[DatasetRecord]) -> dict[str, VerifyResult]:
        return {record.name: self.check(record) for record in records}
