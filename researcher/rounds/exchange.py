"""The exchange with nodes: send tasks, collect replies and the reasons others did not answer.

It decides nothing. Who takes part, how long to wait and what a failure means belong to
the strategy (researcher/strategies); what a reply is worth belongs to the round
(researcher/rounds/round.py). `Exchange` is the seam a transport plugs into: `GrpcExchange`
serves real nodes through the researcher's gRPC server.

For each task it sends, `GrpcExchange` tells the server's PayloadStore which upload to accept
(the node, the payload id derived from the task, at most `ServerLimits.expected_upload_bytes`
of the global model it was sent), and forgets it when the task ends, so a late or orphaned
upload is refused or freed at once. A node whose link drops mid-task keeps its task while it
reconnects within the heartbeat timeout: its retried upload and its reply are still taken.
"""

from __future__ import annotations

import logging
import queue
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from common.constants import HEARTBEAT_TIMEOUT
from common.errors import FedloomError
from common.finite import FiniteArrays
from common.payload import UNSPECIFIED, EncodedPayload, Section
from common.proto import fedloom_pb2 as pb
from common.task_uploads import upload_payload_id
from researcher.node_directory import ConnectedNode, DatasetSummary, NodeEvent
from researcher.server import ResearcherServer

__all__ = [
    "Exchange",
    "ExchangeResult",
    "GrpcExchange",
    "NodeView",
    "ReceivedReply",
    "ReplyHandler",
]

log = logging.getLogger(__name__)
node_log = logging.getLogger("researcher.node")

#: How often the exchange checks deadlines and node liveness while waiting for replies.
POLL_SECONDS = 0.5

_LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}


class NodeView(Protocol):
    """What the round and the strategy may know of a connected node."""

    @property
    def node_id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def label(self) -> str: ...
    @property
    def datasets(self) -> tuple[DatasetSummary, ...]: ...
    @property
    def known_plans(self) -> set[str]: ...
    @property
    def secagg_public_key(self) -> bytes: ...
    def matching_dataset(self, tags: Sequence[str]) -> DatasetSummary | None: ...


@dataclass(frozen=True)
class ReceivedReply:
    """A node's successful answer to a task, with its upload decoded as views (no copy)."""

    node_id: str
    reply: pb.TaskReply
    sections: Mapping[Section, Mapping[str, np.ndarray]]

    @property
    def arrays(self) -> Mapping[str, np.ndarray]:
        """The arrays of a single-purpose upload (e.g. a SecAgg correction)."""
        return self.sections.get(UNSPECIFIED, {})


#: Called with each good reply as it arrives; raising a FedloomError refuses the reply.
ReplyHandler = Callable[[ReceivedReply], None]


@dataclass
class ExchangeResult:
    """Who answered and, for the others, why not.

    `replies` holds the answers only when no handler consumed them as they came.
    """

    answered: list[str] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    replies: dict[str, ReceivedReply] = field(default_factory=dict)
    seconds: float = 0.0


class Exchange(Protocol):
    """A transport to the nodes, as the round engine uses it."""

    @property
    def address(self) -> str:
        """Where nodes reach this researcher (for messages)."""
        ...

    def connected(self) -> list[NodeView]:
        """Nodes connected and alive now."""
        ...

    def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Block until `predicate()` holds (re-checked on every node event) or `timeout`."""
        ...

    def publish(self, payload: EncodedPayload, node_ids: Sequence[str]) -> str:
        """Serve `payload` to these nodes; returns its payload id."""
        ...

    def unpublish(self, payload_id: str) -> None: ...

    def run_tasks(
        self,
        tasks: Mapping[str, pb.TaskRequest],
        timeout: float,
        on_reply: ReplyHandler | None = None,
    ) -> ExchangeResult:
        """Send each node its task and wait for replies, failures, silence or the deadline."""
        ...


class GrpcExchange:
    """The exchange over the researcher's gRPC server."""

    def __init__(self, server: ResearcherServer) -> None:
        self._server = server
        self._published_bytes: dict[str, int] = {}
        #: Size of the last global model published: what a SecAgg correction task, which
        #: names no payload, is measured against.
        self._model_bytes = 0

    @property
    def address(self) -> str:
        return self._server.address

    def connected(self) -> list[NodeView]:
        return list(self._server.directory.connected())

    def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        return self._server.directory.wait_until(predicate, timeout)

    def publish(self, payload: EncodedPayload, node_ids: Sequence[str]) -> str:
        payload_id = f"global-{uuid.uuid4().hex}"
        self._server.payloads.publish(payload_id, payload, node_ids)
        self._published_bytes[payload_id] = self._model_bytes = payload.nbytes
        return payload_id

    def unpublish(self, payload_id: str) -> None:
        self._server.payloads.unpublish(payload_id)
        self._published_bytes.pop(payload_id, None)

    def _upload_limit(self, task: pb.TaskRequest) -> int:
        """Largest upload this task may produce: from the global model it trains on."""
        model_bytes = self._model_bytes
        if task.WhichOneof("kind") == "train":
            model_bytes = self._published_bytes.get(task.train.params_payload_id, model_bytes)
        return self._server.limits.expected_upload_bytes(model_bytes)

    def run_tasks(
        self,
        tasks: Mapping[str, pb.TaskRequest],
        timeout: float,
        on_reply: ReplyHandler | None = None,
    ) -> ExchangeResult:
        started = time.monotonic()
        result = ExchangeResult()
        directory = self._server.directory
        payloads = self._server.payloads
        events: queue.Queue[NodeEvent] = queue.Queue()
        pending: dict[str, ConnectedNode] = {}  # task_id -> node
        uploads: dict[str, tuple[str, str]] = {}  # task_id -> (node id, expected payload id)
        dropped: dict[str, str] = {}  # task_id -> why its node's link dropped (awaiting return)
        directory.add_listener(events.put)
        try:
            for node_id, task in tasks.items():
                node = directory.get(node_id)
                if node is None:
                    result.failures[node_id] = "not connected when the task was sent"
                    continue
                task.task_id = task.task_id or uuid.uuid4().hex
                pending[task.task_id] = node
                uploads[task.task_id] = (node_id, upload_payload_id(task))
                payloads.expect(node_id, upload_payload_id(task), self._upload_limit(task))
                node.send(pb.ResearcherMessage(task=task))
            deadline = started + timeout
            while pending:
                try:
                    event = events.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    self._check_liveness(pending, result, deadline, dropped, uploads)
                    continue
                if isinstance(event.payload, pb.TaskReply):
                    self._handle_reply(event.payload, pending, result, on_reply)
                    self._end(uploads, event.payload.task_id)
                elif isinstance(event.payload, pb.LogRecord):
                    _relay_log(event.node, event.payload)
                elif event.kind == "disconnected":
                    # Not failed yet: a node whose link dropped reconnects and retries its
                    # upload; _check_liveness fails it if it stays silent too long.
                    for task_id, node in pending.items():
                        if node.node_id == event.node.node_id:
                            dropped[task_id] = str(event.payload)
                elif event.kind == "connected":
                    for task_id, node in list(pending.items()):
                        if node.node_id == event.node.node_id:
                            pending[task_id] = event.node
                            if dropped.pop(task_id, None) is not None:
                                log.info("node %s is back; its task goes on", node.label)
                self._check_liveness(pending, result, deadline, dropped, uploads)
        finally:
            directory.remove_listener(events.put)
            for task_id in list(uploads):
                # A task that ended without its upload taken: refuse it from now on and
                # free whatever arrived of it.
                self._end(uploads, task_id)
        result.seconds = time.monotonic() - started
        return result

    def _end(self, uploads: dict[str, tuple[str, str]], task_id: str) -> None:
        """The task is over: its upload is no longer accepted, and freed if it was unused."""
        entry = uploads.pop(task_id, None)
        if entry is not None:
            self._server.payloads.forget(*entry)

    def _handle_reply(
        self,
        reply: pb.TaskReply,
        pending: dict[str, ConnectedNode],
        result: ExchangeResult,
        on_reply: ReplyHandler | None,
    ) -> None:
        node = pending.pop(reply.task_id, None)
        if node is None:
            log.debug("ignoring a reply to unknown or finished task %s", reply.task_id)
            return
        if not reply.ok:
            if reply.error.kind == "UnknownPlan":
                node.known_plans.discard(reply.error.message)
            self._fail(result, node, _error_text(reply.error))
            return
        try:
            sections: Mapping[Section, Mapping[str, np.ndarray]] = {}
            if reply.payload_id:
                upload = self._server.payloads.take_upload(node.node_id, reply.payload_id)
                sections = _proven_finite(upload)
            received = ReceivedReply(node.node_id, reply, sections)
            if on_reply is None:
                result.replies[node.node_id] = received
            else:
                on_reply(received)
        except FedloomError as exc:
            self._fail(result, node, f"reply refused: {exc}")
            return
        result.answered.append(node.node_id)

    def _check_liveness(
        self,
        pending: dict[str, ConnectedNode],
        result: ExchangeResult,
        deadline: float,
        dropped: dict[str, str],
        uploads: dict[str, tuple[str, str]],
    ) -> None:
        now = time.monotonic()
        for task_id, node in list(pending.items()):
            if node.silent_for() > HEARTBEAT_TIMEOUT:
                if task_id in dropped:
                    reason = (
                        f"disconnected ({dropped[task_id]}) and not back within "
                        f"{HEARTBEAT_TIMEOUT:g} s"
                    )
                else:
                    reason = (
                        f"no heartbeat for {node.silent_for():.0f} s (node unreachable or dead)"
                    )
            elif now > deadline:
                reason = (
                    "still working when the round deadline passed (training_args['round_timeout'])"
                )
                node.send(
                    pb.ResearcherMessage(cancel=pb.CancelTask(task_id=task_id, reason=reason))
                )
            else:
                continue
            del pending[task_id]
            dropped.pop(task_id, None)
            self._end(uploads, task_id)
            self._fail(result, node, reason)

    @staticmethod
    def _fail(result: ExchangeResult, node: ConnectedNode, reason: str) -> None:
        result.failures[node.node_id] = reason
        log.error("node %s: %s", node.label, reason)


def _error_text(error: pb.TaskError) -> str:
    text = f"{error.kind}: {error.message}" if error.kind else error.message
    if error.traceback:
        text += f"\n{error.traceback}"
    return text


def _relay_log(node: ConnectedNode, record: pb.LogRecord) -> None:
    node_log.log(_LEVELS.get(record.level.upper(), 20), "[%s] %s", node.name, record.message)


def _proven_finite(upload: EncodedPayload) -> dict[Section, Mapping[str, np.ndarray]]:
    """The upload's sections; those whose float arrays were all proven finite as they
    arrived come as FiniteArrays, which the reply's checks do not scan again."""
    out: dict[Section, Mapping[str, np.ndarray]] = {}
    for section, arrays in upload.sections().items():
        proven = FiniteArrays.proven(arrays, upload.finite.get(section, frozenset()))
        out[section] = arrays if proven is None else proven
    return out
