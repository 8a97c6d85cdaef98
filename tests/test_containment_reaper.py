"""The reaper finds and kills every descendant, orphans re-parented to it included."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

# Run in a child: a subreaper adopts orphans for the rest of its life, which the pytest
# process must not do. The tree: the subreaper -> a child that stays with a child of its
# own, plus one that starts a detached grandchild (fork + setsid + fork) and exits,
# leaving it to the subreaper.
_SCENARIO = textwrap.dedent(
    """
    import json, os, signal, sys, time
    from node.containment import reaper
    from node.containment.syscalls import become_subreaper

    become_subreaper()
    if reaper._children_files(os.getpid()) is None and not {scan_all}:
        print(json.dumps({{"skip": "this kernel has no /proc/<pid>/task/<tid>/children"}}))
        sys.exit(0)
    read_end, write_end = os.pipe()
    nested_read, nested_write = os.pipe()
    staying = os.fork()
    if staying == 0:
        nested = os.fork()
        if nested == 0:
            time.sleep(60)
            os._exit(0)
        os.write(nested_write, str(nested).encode())
        time.sleep(60)
        os._exit(0)
    nested = int(os.read(nested_read, 32))
    leaving = os.fork()
    if leaving == 0:
        os.setsid()
        if os.fork() == 0:
            os.write(write_end, str(os.getpid()).encode())
            time.sleep(60)
        os._exit(0)
    orphan = int(os.read(read_end, 32))
    os.waitpid(leaving, 0)
    deadline = time.monotonic() + 10
    while os.getppid() and time.monotonic() < deadline:
        seen = sorted(reaper.descendants(scan_all={scan_all}))
        if orphan in seen:
            break
        time.sleep(0.01)
    killed = reaper.kill_descendants()
    after = reaper.descendants(scan_all={scan_all})
    print(json.dumps({{"expected": sorted([staying, nested, orphan]), "seen": seen,
                       "killed": killed, "after": after}}))
    """
)


@pytest.mark.parametrize("scan_all", [False, True], ids=["children files", "full scan"])
def test_descendants_include_a_detached_orphan_and_none_survive_the_kill(scan_all: bool) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _SCENARIO.format(scan_all=scan_all)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result = json.loads(done.stdout)
    if "skip" in result:
        pytest.skip(result["skip"])

    assert result["seen"] == result["expected"]
    assert result["killed"] == 3
    assert result["after"] == []
