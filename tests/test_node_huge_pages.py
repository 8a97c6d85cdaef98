"""The warm process's private memory moves into huge pages, which forks share whole."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from node.huge_pages import HUGE_PAGE_BYTES, private_regions

MB = 1 << 20


def test_only_whole_huge_pages_of_private_writable_anonymous_mappings_are_chosen() -> None:
    maps = "\n".join(
        [
            "00400000-00a00000 r-xp 00000000 fd:01 1234 /usr/bin/python3.11",
            "01000000-01500000 rw-p 00000000 00:00 0 [heap]",
            "7f0000100000-7f0000900000 rw-p 00000000 00:00 0 ",
            "7f0001000000-7f0001400000 rw-s 00000000 00:01 99 /dev/shm/shared",
            "7f0002000000-7f0002400000 r--p 00000000 00:00 0 ",
            "7f0003000000-7f0003400000 rw-p 00000000 fd:01 77 /usr/lib/libx.so",
            "7f0004000000-7f0004100000 rw-p 00000000 00:00 0 ",
            "7ffd00000000-7ffd00400000 rw-p 00000000 00:00 0 [stack]",
        ]
    )

    regions = private_regions(maps)

    # The heap and the unnamed mapping, rounded inward to 2 MB; shared, read-only,
    # file-backed, stack and smaller-than-a-huge-page mappings are left alone.
    assert regions == [(0x01000000, 0x01400000), (0x7F0000200000, 0x7F0000800000)]
    assert all(start % HUGE_PAGE_BYTES == 0 == end % HUGE_PAGE_BYTES for start, end in regions)


def test_collapsed_memory_is_in_huge_pages_with_its_contents_unchanged() -> None:
    # A fresh process: the collapse is about this process's memory, not pytest's.
    script = textwrap.dedent(
        """
        import hashlib, json
        from node.huge_pages import collapse_private_memory

        def huge_kb():
            for line in open("/proc/self/smaps_rollup"):
                if line.startswith("AnonHugePages:"):
                    return int(line.split()[1])

        block = bytes(range(256)) * (256 << 10)  # 64 MB of private memory, in 4 kB pages
        digest = hashlib.sha256(block).hexdigest()
        before = huge_kb()
        collapsed = collapse_private_memory()
        print(json.dumps({"before": before, "after": huge_kb(), "collapsed": collapsed,
                          "same": hashlib.sha256(block).hexdigest() == digest}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    result = json.loads(done.stdout)
    if result["collapsed"] == 0:
        pytest.skip("this kernel collapsed nothing (no MADV_COLLAPSE, or THP disabled)")

    assert result["same"]
    assert (result["after"] - result["before"]) * 1024 >= 60 * MB
