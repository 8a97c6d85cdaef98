"""What the SecAgg driver needs from the round engine: send tasks, collect their replies.

Protocols only, so the engine's exchange (researcher.rounds.exchange.GrpcExchange) satisfies
them as it is; :class:`CollectedReply` and :class:`CollectedReplies` are plain
implementations for exchanges that call node handlers directly (tests, benchmarks). No
policy here: which node counts as dropped is the driver's business.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from common.proto import fedloom_pb2 as pb

__all__ = [
    "CollectedReplies",
    "CollectedReply",
    "ExchangeResult",
    "ReceivedReply",
    "TaskExchange",
]


class ReceivedReply(Protocol):
    """A node's reply and the arrays decoded from its upload (empty when it uploaded none)."""

    @property
    def reply(self) -> pb.TaskReply: ...
    @property
    def arrays(self) -> Mapping[str, np.ndarray]: ...


class ExchangeResult(Protocol):
    """Replies by node id, and why the other nodes gave none (timeout, disconnect, refusal)."""

    @property
    def replies(self) -> Mapping[str, ReceivedReply]: ...
    @property
    def failures(self) -> Mapping[str, str]: ...


class TaskExchange(Protocol):
    """Sends one task to each node and waits at most ``timeout`` seconds for the replies."""

    def run_tasks(self, tasks: Mapping[str, pb.TaskRequest], timeout: float) -> ExchangeResult:
        """Send ``tasks[node_id]`` to each node; return replies and failures by node id."""
        ...


@dataclass(frozen=True)
class CollectedReply:
    """A plain :class:`ReceivedReply`."""

    reply: pb.TaskReply
    arrays: Mapping[str, np.ndarray] = field(default_factory=dict)


@dataclass
class CollectedReplies:
    """A plain :class:`ExchangeResult`, filled as replies come."""

    replies: dict[str, CollectedReply] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
