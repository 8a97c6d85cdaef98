"""One round on the wire: publish the global model once, send tasks, collect replies or failures.

Failure policy is not decided here: the round reports who answered and why the others did
not, and the strategy decides whether that is enough.
"""

from __future__ import annotations

import logging
import queue
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from common.constants import HEARTBEAT_TIMEOUT
from common.errors import FedloomError
from common.payload import EncodedPayload
from common.proto import fedloom_pb2 as pb
from researcher.node_directory import ConnectedNode
from researcher.server import ResearcherServer

__all__ = [
    "NodeReply",
    "PlanInfo",
    "RoundOutcome",
    "RoundRequest",
    "exchange",
    "run_round",
    "run_secagg_corrections",
]

log = logging.getLogger(__name__)
node_log = logging.getLogger("researcher.node")

#: How often the round checks deadlines and node liveness while waiting for replies.
POLL_SECONDS = 0.5

_LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}


@dataclass(frozen=True)
class PlanInfo:
    """The training plan as it travels: class name, source and its hash."""

    class_name: str
    source: str
    sha256: str


@dataclass
class RoundRequest:
    """Everything the nodes of one round receive."""

    experiment_id: str
    round_number: int
    plan: PlanInfo
    global_payload: EncodedPayload
    aux_vars: pb.AuxVars
    training_args_json: str
    model_args_json: str
    datasets: Mapping[str, str]  # node_id -> dataset name
    timeout: float
    secagg: Mapping[str, pb.SecaggContext] = field(default_factory=dict)


@dataclass
class NodeReply:
    """A successful node reply, with its arrays decoded as views over the received buffer."""

    node_id: str
    node_name: str
    n_samples: int
    arrays: dict[str, np.ndarray]
    aux_vars: pb.AuxVars
    metrics: dict[str, float]
    losses: list[float]
    train_seconds: float
    n_steps: int


@dataclass
class RoundOutcome:
    """Who answered and, for the others, why not."""

    answered: list[str] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def _task_request(
    request: RoundRequest, node: ConnectedNode, task_id: str, payload_id: str
) -> pb.ResearcherMessage:
    plan = pb.TrainingPlanSource(class_name=request.plan.class_name, sha256=request.plan.sha256)
    if request.plan.sha256 not in node.known_plans:
        plan.source = request.plan.source
    train = pb.TrainRequest(
        plan=plan,
        params_payload_id=payload_id,
        aux_vars=request.aux_vars,
        training_args_json=request.training_args_json,
        model_args_json=request.model_args_json,
        dataset_name=request.datasets[node.node_id],
    )
    if node.node_id in request.secagg:
        train.secagg.CopyFrom(request.secagg[node.node_id])
    task = pb.TaskRequest(
        task_id=task_id,
        experiment_id=request.experiment_id,
        round=request.round_number,
        timeout_seconds=request.timeout,
        train=train,
    )
    return pb.ResearcherMessage(task=task)


def _error_text(error: pb.TaskError) -> str:
    text = f"{error.kind}: {error.message}" if error.kind else error.message
    if error.traceback:
        text += f"\n{error.traceback}"
    return text


def run_round(
    server: ResearcherServer,
    request: RoundRequest,
    nodes: Sequence[ConnectedNode],
    on_reply: Callable[[NodeReply], None],
) -> RoundOutcome:
    """Send the round's tasks to `nodes` and call `on_reply` for each good reply, as it comes.

    Returns when every node has answered, failed, gone silent, or passed the deadline.
    """
    payload_id = f"global-{request.experiment_id}-{request.round_number}-{uuid.uuid4().hex[:8]}"
    server.payloads.publish(payload_id, request.global_payload, [n.node_id for n in nodes])
    messages = []
    for node in nodes:
        task_id = uuid.uuid4().hex
        messages.append((task_id, node, _task_request(request, node, task_id, payload_id)))
    try:
        outcome = exchange(server, messages, request.timeout, request.round_number, on_reply)
    finally:
        server.payloads.unpublish(payload_id)
    for node in nodes:
        node.known_plans.add(request.plan.sha256)
    return outcome


def run_secagg_corrections(
    server: ResearcherServer,
    experiment_id: str,
    round_number: int,
    survivors: Sequence[ConnectedNode],
    session_id: str,
    dropped: Sequence[str],
    payload_names: Sequence[str],
    timeout: float,
    on_reply: Callable[[NodeReply], None],
) -> RoundOutcome:
    """Ask SecAgg survivors for their masks toward `dropped`; `on_reply` gets the corrections."""
    request = pb.SecaggCorrectionRequest(
        session_id=session_id, dropped=list(dropped), payload_names=list(payload_names)
    )
    messages = []
    for node in survivors:
        task_id = uuid.uuid4().hex
        task = pb.TaskRequest(
            task_id=task_id,
            experiment_id=experiment_id,
            round=round_number,
            timeout_seconds=timeout,
            secagg_correction=request,
        )
        messages.append((task_id, node, pb.ResearcherMessage(task=task)))
    return exchange(server, messages, timeout, round_number, on_reply)


def exchange(
    server: ResearcherServer,
    messages: Sequence[tuple[str, ConnectedNode, pb.ResearcherMessage]],
    timeout: float,
    round_number: int,
    on_reply: Callable[[NodeReply], None],
) -> RoundOutcome:
    """Send one task per node and wait for replies, failures, silence or the deadline."""
    started = time.monotonic()
    outcome = RoundOutcome()
    events: queue.Queue[tuple[str, ConnectedNode, object]] = queue.Queue()
    pending: dict[str, ConnectedNode] = {}  # task_id -> node

    def listen(event: str, node: ConnectedNode, payload: object) -> None:
        events.put((event, node, payload))

    server.directory.add_listener(listen)
    try:
        for task_id, node, message in messages:
            pending[task_id] = node
            node.send(message)
        deadline = started + timeout
        while pending:
            try:
                event, node, payload = events.get(timeout=POLL_SECONDS)
            except queue.Empty:
                _check_liveness(server, pending, outcome, deadline, round_number)
                continue
            if event == "reply" and isinstance(payload, pb.TaskReply):
                _handle_reply(server, payload, pending, outcome, on_reply)
            elif event == "log" and isinstance(payload, pb.LogRecord):
                _relay_log(node, payload)
            elif event == "disconnected":
                for task_id in [t for t, n in pending.items() if n.node_id == node.node_id]:
                    del pending[task_id]
                    outcome.failures[node.node_id] = f"disconnected during the round ({payload})"
                    log.error(
                        "node %s dropped out of round %d: %s", node.label, round_number, payload
                    )
            _check_liveness(server, pending, outcome, deadline, round_number)
    finally:
        server.directory.remove_listener(listen)
        for _, node, _ in messages:
            if node.node_id in outcome.failures:
                server.payloads.drop_uploads_of(node.node_id)
    outcome.seconds = time.monotonic() - started
    return outcome


def _handle_reply(
    server: ResearcherServer,
    reply: pb.TaskReply,
    pending: dict[str, ConnectedNode],
    outcome: RoundOutcome,
    on_reply: Callable[[NodeReply], None],
) -> None:
    node = pending.pop(reply.task_id, None)
    if node is None:
        log.debug("ignoring a reply to unknown or finished task %s", reply.task_id)
        return
    if not reply.ok:
        reason = _error_text(reply.error)
        outcome.failures[node.node_id] = reason
        if reply.error.kind == "UnknownPlan":
            node.known_plans.discard(reply.error.message)
        log.error("node %s failed round %d: %s", node.label, reply.round, reason)
        return
    try:
        payload = server.payloads.take_upload(node.node_id, reply.payload_id)
        result = NodeReply(
            node_id=node.node_id,
            node_name=node.name,
            n_samples=int(reply.n_samples),
            arrays=payload.arrays(),
            aux_vars=reply.aux_vars,
            metrics=dict(reply.metrics),
            losses=list(reply.losses),
            train_seconds=reply.train_seconds,
            n_steps=int(reply.n_steps),
        )
        on_reply(result)
    except FedloomError as exc:
        outcome.failures[node.node_id] = f"unusable reply: {exc}"
        log.error("node %s sent an unusable reply: %s", node.label, exc)
        return
    outcome.answered.append(node.node_id)


def _relay_log(node: ConnectedNode, record: pb.LogRecord) -> None:
    node_log.log(_LEVELS.get(record.level.upper(), 20), "[%s] %s", node.name, record.message)


def _check_liveness(
    server: ResearcherServer,
    pending: dict[str, ConnectedNode],
    outcome: RoundOutcome,
    deadline: float,
    round_number: int,
) -> None:
    now = time.monotonic()
    for task_id, node in list(pending.items()):
        if node.silent_for() > HEARTBEAT_TIMEOUT:
            reason = f"no heartbeat for {node.silent_for():.0f} s (node unreachable or dead)"
        elif now > deadline:
            reason = (
                "still training when the round deadline passed (training_args['round_timeout'])"
            )
            node.send(pb.ResearcherMessage(cancel=pb.CancelTask(task_id=task_id, reason=reason)))
        else:
            continue
        del pending[task_id]
        outcome.failures[node.node_id] = reason
        log.error("node %s dropped from round %d: %s", node.label, round_number, reason)
