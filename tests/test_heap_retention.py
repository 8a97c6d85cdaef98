"""common/heap_retention.py: freed message buffers are reused, not faulted in afresh."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="mallopt thresholds are glibc's"
)

# What a streaming process does: several 1 MiB messages alive at once, then all freed, again
# and again. Prints the page faults taken after the first burst.
_BURSTS = """
import resource, sys
from common.heap_retention import retain_freed_heap
if sys.argv[1] == "retain":
    assert retain_freed_heap()
def burst():
    messages = [bytes([i]) * (1 << 20) for i in range(8)]
    return sum(m[-1] for m in messages)
burst()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(40):
    burst()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _BURSTS, mode], check=True, capture_output=True, text=True
    )
    return int(out.stdout)


def test_freed_messages_are_reused_instead_of_faulted_in_again() -> None:
    default, retained = _faults("default"), _faults("retain")
    # By default the freed top of the heap goes back to the kernel after each burst:
    # 40 bursts x 8 MiB of 4 kB pages.
    assert default > 40 * 8 * 256 // 2
    assert retained < default / 20
