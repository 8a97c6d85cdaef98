"""What the SecAgg driver needs from the round engine: send tasks, collect their replies.

The engine's exchange satisfies :class:`TaskExchange`; tests use one that calls the node
handlers directly. No policy here: which node counts as dropped is the driver's business.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from common.proto import fedloom_pb2 as pb

__all__ = ["ExchangeResult", "ReceivedReply", "TaskExchange"]


@dataclass(frozen=True)
class ReceivedReply:
    """A node's reply and the arrays decoded from its upload (empty when it uploaded none)."""

    reply: pb.TaskReply
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class ExchangeResult:
    """Replies by node id, and why the other nodes gave none (timeout, disconnect, ...)."""

    replies: dict[str, ReceivedReply] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)


class TaskExchange(Protocol):
    """Sends one task to each node and waits at most ``timeout`` seconds for the replies."""

    def run_tasks(self, tasks: Mapping[str, pb.TaskRequest], timeout: float) -> ExchangeResult:
        """Send ``tasks[node_id]`` to each node; return replies and failures by node id."""
        ...
