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


# Eight threads each hold 12 MiB of messages at the same moment, then free them. Prints how
# much resident memory the process kept, in MiB.
_THREADS = """
import sys, threading
from common.heap_retention import retain_freed_heap
assert retain_freed_heap()
def rss():
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) for l in fh if l.startswith("VmRSS")) / 1024
barrier = threading.Barrier(8)
def work(i):
    messages = [bytes([i]) * (1 << 20) for _ in range(12)]
    barrier.wait()
    del messages
before = rss()
threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
for t in threads: t.start()
for t in threads: t.join()
print(rss() - before)
"""


def test_freed_memory_kept_is_bounded_whatever_the_number_of_threads() -> None:
    from common.heap_retention import TRIM_THRESHOLD

    out = subprocess.run(
        [sys.executable, "-c", _THREADS], check=True, capture_output=True, text=True
    )
    # An arena per thread would keep each thread's 12 MiB: 96 MiB.
    assert float(out.stdout) < TRIM_THRESHOLD / 2**20 + 8
