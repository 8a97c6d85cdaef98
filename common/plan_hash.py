"""A training plan's identity: SHA-256 of its canonical source (no heavy imports here)."""

from __future__ import annotations

import hashlib

__all__ = ["canonical_source", "plan_hash"]


def canonical_source(source: str) -> str:
    """The form of a plan's source that is hashed and approved.

    LF line endings, no trailing whitespace on any line, no blank lines at either end,
    one final newline: the same plan saved on Windows or by an editor that trims spaces
    keeps its hash.
    """
    lines = source.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "\n".join(line.rstrip() for line in lines).strip("\n") + "\n"


def plan_hash(source: str) -> str:
    """SHA-256 (hex) of `canonical_source(source)` encoded as UTF-8."""
    return hashlib.sha256(canonical_source(source).encode("utf-8")).hexdigest()
