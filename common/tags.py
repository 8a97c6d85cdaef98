"""The tag rule shared by nodes (registering datasets) and researchers (asking for them).

A tag starts with `#` (`#heart`, `#csv`): a fixed mark that tells tags from names at a glance
and makes a forgotten `#` an error at once rather than a silent "no matching node" later.
"""

from __future__ import annotations

__all__ = ["TAG_PREFIX", "tag_problem"]

TAG_PREFIX = "#"


def tag_problem(tag: str) -> str | None:
    """What is wrong with a (stripped, non-empty) tag, with the fix; None when it is valid."""
    if not tag.startswith(TAG_PREFIX) or tag == TAG_PREFIX:
        return f"tag {tag!r} must start with '{TAG_PREFIX}' followed by a name: write '#{tag.lstrip(TAG_PREFIX) or 'name'}'"
    return None
