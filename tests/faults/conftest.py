"""Fixtures of the fault suite: a researcher server with chosen limits, and resource baselines."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import psutil
import pytest

from researcher.server import ResearcherServer
from researcher.server_limits import ServerLimits

#: RSS a fault may leave behind once it is over: allocator slack and caches, far below the
#: payloads the faults try to make the researcher hold (hundreds of MB to GB).
RSS_SLACK_BYTES = 48 << 20

#: OS threads a fault may leave behind (grpc's own pollers start lazily, one or two).
THREAD_SLACK = 3


@dataclass
class Baseline:
    """The researcher process's thread count and RSS at a quiet moment."""

    threads: int
    rss: int

    @staticmethod
    def now() -> Baseline:
        proc = psutil.Process()
        return Baseline(proc.num_threads(), proc.memory_info().rss)

    def assert_back(self, timeout: float = 30.0) -> Baseline:
        """Wait until threads and RSS are back near this baseline; fail naming both if not."""
        deadline = time.monotonic() + timeout
        while True:
            current = Baseline.now()
            if (
                current.threads <= self.threads + THREAD_SLACK
                and current.rss <= self.rss + RSS_SLACK_BYTES
            ):
                return current
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"researcher did not return to baseline: threads {current.threads} "
                    f"(baseline {self.threads}), RSS {current.rss >> 20} MiB "
                    f"(baseline {self.rss >> 20} MiB); python threads: "
                    f"{[t.name for t in threading.enumerate()]}"
                )
            time.sleep(0.5)


@pytest.fixture
def make_server(researcher_address: str) -> Iterator[Callable[..., ResearcherServer]]:
    """Start a plain-text ResearcherServer on the test's researcher address, with limits."""
    servers: list[ResearcherServer] = []

    def make(**limits: Any) -> ResearcherServer:
        server = ResearcherServer(researcher_address, limits=ServerLimits(**limits)).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def assert_fedavg_of(
    aggregated: Mapping[str, np.ndarray], replies: Mapping[str, Mapping[str, Any]]
) -> None:
    """The global model equals the sample-weighted mean of exactly these nodes' parameters."""
    assert replies, "no node's reply was accepted"
    total = sum(r["sample_size"] for r in replies.values())
    for name, value in aggregated.items():
        expected = (
            sum(r["sample_size"] * r["params"][name].astype(np.float64) for r in replies.values())
            / total
        )
        np.testing.assert_allclose(value, expected, rtol=1e-6, atol=1e-7, err_msg=name)
