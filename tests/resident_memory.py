"""What this test process holds resident, from /proc (Linux)."""

from __future__ import annotations

from pathlib import Path


def rss_file_bytes() -> int:
    """Resident pages of files this process maps (RssFile)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no RssFile in /proc/self/status (Linux only)")
