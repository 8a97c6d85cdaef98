#!/usr/bin/env python3
"""Container health check: is the fedloom process of this container alive and serving?

Healthy (exit 0) when a `fedloom researcher run` process exists and its --address port
accepts TCP connections, or when a `fedloom node ... start` process exists; any other
fedloom command (the one-shot `certs` role) counts as healthy while it runs.
Standard library only, so it runs even if the fedloom install is broken.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

#: Seconds to wait for the researcher's port; the HEALTHCHECK timeout is 5 s.
CONNECT_TIMEOUT = 2.0
DEFAULT_ADDRESS = "0.0.0.0:50051"


def _fedloom_processes() -> list[list[str]]:
    """Argument vectors of this container's fedloom processes (from /proc)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:  # the process exited while we looked
            continue
        if any(Path(arg).name == "fedloom" or arg == "fedloom.cli" for arg in argv):
            found.append(argv)
    return found


def _flag(argv: list[str], name: str, default: str) -> str:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return default


def _port_open(address: str) -> bool:
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT):
            return True
    except (OSError, ValueError):
        return False


def _is_command(argv: list[str], *words: str) -> bool:
    """True when ``words`` appear in ``argv`` in this order (``node --home H start``)."""
    rest = iter(argv)
    return all(any(arg == word for arg in rest) for word in words)


def main() -> int:
    processes = _fedloom_processes()
    researchers = [a for a in processes if _is_command(a, "researcher", "run")]
    if researchers:
        address = _flag(researchers[0], "--address", DEFAULT_ADDRESS)
        if _port_open(address):
            return 0
        sys.stderr.write(f"researcher is not accepting connections on {address}\n")
        return 1
    if any(_is_command(a, "node", "start") for a in processes):
        return 0
    if processes:
        return 0  # a one-shot command (certs, dataset add) is running
    sys.stderr.write("no fedloom process is running in this container\n")
    return 1


if __name__ == "__main__":
    sys.exit(main())
