"""Which nodes are connected, what they hold, and the queue of messages to each."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from common.constants import HEARTBEAT_TIMEOUT
from common.proto import fedloom_pb2 as pb

__all__ = ["ConnectedNode", "DatasetSummary", "NodeDirectory", "NodeEvent", "Outbox"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetSummary:
    """A dataset a node announced: name, tags, sample count and shape."""

    name: str
    tags: tuple[str, ...]
    n_samples: int
    shape: tuple[int, ...]
    data_type: str

    @classmethod
    def from_proto(cls, info: pb.DatasetInfo) -> DatasetSummary:
        return cls(
            info.name, tuple(info.tags), int(info.n_samples), tuple(info.shape), info.data_type
        )

    def matches(self, tags: Sequence[str]) -> bool:
        """True when the dataset has all requested tags."""
        return set(tags) <= set(self.tags)


class Outbox:
    """Messages to one node: put from any thread, awaited by its stream on the server's loop.

    Created on the server's event loop (where nodes register); `put` hands the message to
    that loop thread-safely, so a round running in another thread never touches the queue.
    A put after the server stopped is dropped: there is no stream left to carry it.
    """

    def __init__(self) -> None:
        self._queue: asyncio.Queue[pb.ResearcherMessage | None] = asyncio.Queue()
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # built outside a server (tests of the directory alone)
            self._loop = None

    def put(self, message: pb.ResearcherMessage | None) -> None:
        if self._loop is None:
            self._queue.put_nowait(message)
            return
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, message)
        except RuntimeError:  # loop closed: the server is gone
            pass

    async def get(self) -> pb.ResearcherMessage | None:
        return await self._queue.get()

    def get_nowait(self) -> pb.ResearcherMessage | None:
        """The next queued message (asyncio.QueueEmpty when none); for tests."""
        return self._queue.get_nowait()


@dataclass
class ConnectedNode:
    """One node's live connection: identity, datasets, liveness and outgoing queue."""

    node_id: str
    name: str
    datasets: tuple[DatasetSummary, ...]
    secagg_public_key: bytes
    peer: str
    connected_at: float = field(default_factory=time.monotonic)
    last_seen: float = field(default_factory=time.monotonic)
    state: str = "idle"
    outbox: Outbox = field(default_factory=Outbox)
    alive: bool = True
    known_plans: set[str] = field(default_factory=set)

    def send(self, message: pb.ResearcherMessage) -> None:
        self.outbox.put(message)

    def silent_for(self) -> float:
        return time.monotonic() - self.last_seen

    def matching_dataset(self, tags: Sequence[str]) -> DatasetSummary | None:
        for dataset in self.datasets:
            if dataset.matches(tags):
                return dataset
        return None

    @property
    def label(self) -> str:
        """How the node is named in messages to the researcher."""
        return (
            f"{self.name} ({self.node_id})"
            if self.name and self.name != self.node_id
            else self.node_id
        )


@dataclass(frozen=True)
class NodeEvent:
    """Something a node did: "connected", "disconnected" (payload: reason), "reply"
    (payload: TaskReply) or "log" (payload: LogRecord)."""

    kind: str
    node: ConnectedNode
    payload: object = None


Listener = Callable[[NodeEvent], None]


class NodeDirectory:
    """Thread-safe registry of connected nodes; notifies listeners of node events.

    Events: "connected", "disconnected", "reply" (payload: TaskReply), "log" (LogRecord).
    """

    def __init__(self) -> None:
        self._nodes: dict[str, ConnectedNode] = {}
        self._lock = threading.Condition()
        #: Set by the server when it shuts down: nodes leaving then is expected.
        self.closing = False
        self._listeners: list[Listener] = []

    def add_listener(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def emit(self, kind: str, node: ConnectedNode, payload: object = None) -> None:
        with self._lock:
            listeners = list(self._listeners)
        event = NodeEvent(kind, node, payload)
        for listener in listeners:
            listener(event)

    def register(self, hello: pb.Hello, peer: str) -> ConnectedNode:
        """Record a node that said hello; a reconnecting node replaces its old stream."""
        node = ConnectedNode(
            node_id=hello.node_id,
            name=hello.node_name or hello.node_id,
            datasets=tuple(DatasetSummary.from_proto(d) for d in hello.datasets),
            secagg_public_key=bytes(hello.secagg_public_key),
            peer=peer,
        )
        with self._lock:
            old = self._nodes.get(node.node_id)
            self._nodes[node.node_id] = node
            self._lock.notify_all()
        if old is not None:
            old.alive = False
            old.outbox.put(None)
            log.info("node %s reconnected from %s", node.label, peer)
        else:
            log.info(
                "node %s connected from %s with %d dataset(s)", node.label, peer, len(node.datasets)
            )
        self.emit("connected", node)
        return node

    def unregister(self, node: ConnectedNode, reason: str) -> None:
        """Forget a node whose stream ended (only if it was not replaced meanwhile)."""
        with self._lock:
            if self._nodes.get(node.node_id) is node:
                del self._nodes[node.node_id]
            was_alive, node.alive = node.alive, False
            self._lock.notify_all()
        node.outbox.put(None)
        if was_alive:
            # At shutdown every node leaves: that is the normal end of a run, not a warning.
            level = logging.INFO if self.closing else logging.WARNING
            log.log(level, "node %s disconnected: %s", node.label, reason)
            self.emit("disconnected", node, reason)

    def get(self, node_id: str) -> ConnectedNode | None:
        with self._lock:
            return self._nodes.get(node_id)

    def connected(self) -> list[ConnectedNode]:
        """Nodes connected and heard from within the heartbeat timeout."""
        with self._lock:
            return [
                n for n in self._nodes.values() if n.alive and n.silent_for() < HEARTBEAT_TIMEOUT
            ]

    def matching(self, tags: Sequence[str]) -> list[ConnectedNode]:
        return [n for n in self.connected() if n.matching_dataset(tags) is not None]

    def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Block until `predicate()` holds or `timeout` seconds pass; returns the final value."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return predicate()
                self._lock.wait(min(remaining, 0.5))
            return True
