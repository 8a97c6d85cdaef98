"""One round: select → publish → train → decode and validate → aggregate → server optimizer.

`run_round` asks the strategy every policy question (who, how long, is it enough), uses the
exchange to talk to nodes, decodes each reply whole before the aggregation folds it, and
returns the new global parameters with the round's record. It commits nothing: the
experiment adopts the result and checkpoints it (researcher/rounds/state.py).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from common.errors import FedloomError
from common.optimizers.aux_codec import encode_aux_vars
from common.page_release import release_file_pages
from common.payload import EncodedPayload, Sections
from common.payload_files import read_payload_file, write_sections_file
from common.proto import fedloom_pb2 as pb
from common.secagg import SecureAggregation as SecaggSettings
from common.trace import span
from common.training_args import TrainingArgs
from researcher.aggregators import Aggregator
from researcher.history import NodeRoundRecord, RoundRecord
from researcher.optimization import ResearcherOptimizer
from researcher.privacy import NodeDPAccountant
from researcher.rounds.aggregation import (
    ClearAggregation,
    RoundAggregation,
    SecureAggregation,
    check_secagg_configuration,
)
from researcher.rounds.exchange import Exchange, NodeView, ReceivedReply
from researcher.rounds.global_update import global_update
from researcher.rounds.policy import Strategy
from researcher.rounds.reply import ModelTemplate, TrainReply, decode_train_reply
from researcher.secagg import Participant, SecureRoundSession

__all__ = ["PlanInfo", "RoundListener", "RoundResult", "RoundSetup", "run_round"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlanInfo:
    """The training plan as it travels: class name, source and its hash."""

    class_name: str
    source: str
    sha256: str


@dataclass(frozen=True)
class RoundSetup:
    """What every round of a run needs and does not change."""

    experiment_id: str
    plan: PlanInfo
    tags: Sequence[str]
    nodes: Sequence[str] | None
    training_args: TrainingArgs
    model_args: Mapping[str, object]
    node_wait_timeout: float
    aggregator: Aggregator
    strategy: Strategy
    optimizer: ResearcherOptimizer | None
    secagg: SecaggSettings | None
    trainable: frozenset[str]
    #: Node-level DP's accountant (training_args["dp"] type "node"), None without it.
    node_dp: NodeDPAccountant | None = None
    #: The plan's local parameters: never in the global model nor in any reply.
    local: frozenset[str] = frozenset()


class RoundListener(Protocol):
    """Who follows a round as it happens (the progress display)."""

    def waiting_for_nodes(
        self,
        connected: Sequence[NodeView],
        eligible: Sequence[NodeView],
        needed: int,
        wanted: Sequence[str] | None,
    ) -> None: ...
    def round_started(self, round_number: int, nodes: Mapping[str, str]) -> None: ...
    def node_answered(
        self, round_number: int, node_id: str, loss: float | None, n_samples: int
    ) -> None: ...


#: Receives each accepted reply's parameters (to keep them, when asked for).
ParamsSink = Callable[[str, Mapping[str, np.ndarray]], None]


@dataclass
class RoundResult:
    """A completed round: the new global model and what happened."""

    params: dict[str, np.ndarray]
    record: RoundRecord
    replies: dict[str, TrainReply] = field(default_factory=dict)


def run_round(
    exchange: Exchange,
    setup: RoundSetup,
    round_number: int,
    global_params: Mapping[str, np.ndarray],
    listener: RoundListener,
    *,
    settle: bool = False,
    keep_params: ParamsSink | None = None,
    encoded_params: EncodedPayload | None = None,
) -> RoundResult:
    """Run round `round_number` from `global_params`; raise RoundFailedError if it cannot finish.

    `encoded_params`, when given, is `global_params` already laid out as the payload's
    parameters section (the previous round's file, memory-mapped): it is published as is
    whenever no aux var travels with it, instead of being copied into a fresh buffer.
    """
    strategy = setup.strategy
    eligible = strategy.wait_for_nodes(
        exchange,
        setup.tags,
        setup.nodes,
        setup.node_wait_timeout,
        settle=settle,
        on_wait=lambda connected, nodes, needed: listener.waiting_for_nodes(
            connected, nodes, needed, setup.nodes
        ),
    )
    chosen = set(strategy.select([n.node_id for n in eligible], round_number))
    selected = [n for n in eligible if n.node_id in chosen]
    labels = {n.node_id: n.label for n in selected}
    names = {n.node_id: n.name for n in selected}
    deadline = strategy.round_deadline(setup.training_args)
    template = ModelTemplate.of(global_params, setup.local)
    aggregation, secure = _aggregation(setup, round_number, selected, global_params)
    if secure is not None:
        # Key adverts and share distribution; nodes lost there are out of the round.
        remaining = set(secure.setup(exchange, deadline))
        selected = [n for n in selected if n.node_id in remaining]
    aux_modules = (
        frozenset(setup.optimizer.optimizer.aux_var_names) if setup.optimizer else frozenset()
    )
    record = RoundRecord(round=round_number)
    replies: dict[str, TrainReply] = {}
    listener.round_started(round_number, labels)

    def on_reply(received: ReceivedReply) -> None:
        with span("researcher.fold", node=names[received.node_id]):
            _accept(received)

    def _accept(received: ReceivedReply) -> None:
        with span("researcher.check"):
            reply = decode_train_reply(
                received,
                names[received.node_id],
                labels[received.node_id],
                template,
                aux_modules=aux_modules,
                secure=secure is not None,
                params_masked=secure is not None and secure.settings.protect_parameters,
            )
        with span("researcher.add"):
            aggregation.add(reply)
        # Accepted: from here on the reply is part of the round.
        if keep_params is not None and reply.params:
            keep_params(reply.node_id, reply.params)
        replies[reply.node_id] = _without_arrays(reply)
        record.nodes.append(
            NodeRoundRecord(
                round=round_number,
                node=reply.node_id,
                node_name=reply.node_name,
                n_samples=reply.n_samples,
                loss=reply.mean_loss,
                metrics=reply.metrics,
                train_seconds=reply.train_seconds,
                n_steps=reply.n_steps,
                dp_epsilon=reply.dp_epsilon,
            )
        )
        listener.node_answered(round_number, reply.node_id, reply.mean_loss, reply.n_samples)

    with span("researcher.publish"):
        payload, aux_message, spooled = _global_payload(
            setup, global_params, sorted(chosen), encoded_params
        )
    try:
        payload_id = exchange.publish(payload, sorted(chosen))
    except BaseException:
        if spooled is not None:
            spooled.unlink(missing_ok=True)
        raise
    del payload  # the exchange holds it while nodes download
    try:
        tasks = {
            n.node_id: _train_task(
                setup, round_number, n, payload_id, deadline, aux_message, secure
            )
            for n in selected
        }
        with span("researcher.run_tasks"):
            outcome = exchange.run_tasks(tasks, deadline, on_reply)
    finally:
        exchange.unpublish(payload_id)
        if spooled is not None:
            spooled.unlink(missing_ok=True)
    for node in selected:
        if node.node_id in outcome.answered:
            node.known_plans.add(setup.plan.sha256)
    record.failures = dict(outcome.failures)
    record.seconds = outcome.seconds
    strategy.check_answers(
        outcome.answered, {labels.get(k, k): v for k, v in outcome.failures.items()}
    )
    with span("researcher.finish"):
        aggregate = aggregation.finish(exchange, outcome.answered, deadline)
    if setup.node_dp is not None:
        record.node_dp = setup.node_dp.charge(
            eligible=len(eligible),
            participants=len(selected),
            survivors=len(outcome.answered),
            dimension=sum(int(np.size(v)) for v in global_params.values()),
        )
    with span("researcher.global_update"):
        new_params = global_update(global_params, aggregate, setup.optimizer, setup.trainable)
    return RoundResult(new_params, record, replies)


def _aggregation(
    setup: RoundSetup,
    round_number: int,
    selected: Sequence[NodeView],
    global_params: Mapping[str, np.ndarray],
) -> tuple[RoundAggregation, SecureRoundSession | None]:
    """The seam: clear folding, or a SecAgg session whose unmasked sum folds the same way."""
    if setup.secagg is None:
        return ClearAggregation(setup.aggregator, global_params), None
    check_secagg_configuration(setup.secagg, setup.aggregator)
    session = SecureRoundSession(
        setup.secagg,
        setup.experiment_id,
        round_number,
        [Participant(n.node_id, n.label) for n in selected],
    )
    return SecureAggregation(session, setup.aggregator, global_params), session


def _global_payload(
    setup: RoundSetup,
    global_params: Mapping[str, np.ndarray],
    node_ids: Sequence[str],
    encoded_params: EncodedPayload | None,
) -> tuple[EncodedPayload, pb.AuxVars, Path | None]:
    """The payload every selected node downloads (encoded once), the aux-var message, and
    the temporary file to remove after the round when the payload had to be written."""
    message = pb.AuxVars()
    aux_arrays: dict[str, np.ndarray] = {}
    if setup.optimizer is not None:
        aux = setup.optimizer.collect_aux_var_for(node_ids)
        if aux:
            message, aux_arrays = encode_aux_vars(aux)
    if encoded_params is not None and not aux_arrays:
        return encoded_params, message, None
    payload, spooled = _spooled_payload(
        {pb.PAYLOAD_SECTION_PARAMS: global_params, pb.PAYLOAD_SECTION_AUX: aux_arrays}
    )
    # Round 1's parameters map the plan probe's file: writing them read every page, which
    # would stay resident through the round.
    release_file_pages(global_params)
    return payload, message, spooled


def _spooled_payload(sections: Sections) -> tuple[EncodedPayload, Path]:
    """The payload written to a temporary file and mapped: served from the file with
    `pread`, it never takes a model-sized buffer of the researcher's memory. The caller
    removes the file once the payload is unpublished."""
    fd, name = tempfile.mkstemp(prefix="fedloom-global-", suffix=".payload")
    os.close(fd)
    path = Path(name)
    try:
        write_sections_file(path, sections)
        return read_payload_file(path), path
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _train_task(
    setup: RoundSetup,
    round_number: int,
    node: NodeView,
    payload_id: str,
    deadline: float,
    aux_message: pb.AuxVars,
    secure: SecureRoundSession | None,
) -> pb.TaskRequest:
    plan = pb.TrainingPlanSource(class_name=setup.plan.class_name, sha256=setup.plan.sha256)
    if setup.plan.sha256 not in node.known_plans:
        plan.source = setup.plan.source
    dataset = node.matching_dataset(setup.tags)
    if dataset is None:  # the strategy only selects nodes holding the tags
        raise FedloomError(f"node {node.label} holds no dataset with tags {list(setup.tags)}")
    train = pb.TrainRequest(
        plan=plan,
        params_payload_id=payload_id,
        aux_vars=aux_message,
        training_args_json=setup.training_args.to_json(),
        model_args_json=json.dumps(dict(setup.model_args)),
        dataset_name=dataset.name,
    )
    if secure is not None:
        train.secagg.CopyFrom(secure.train_context(node.node_id))
    return pb.TaskRequest(
        experiment_id=setup.experiment_id,
        round=round_number,
        timeout_seconds=deadline,
        train=train,
    )


def _without_arrays(reply: TrainReply) -> TrainReply:
    """The reply's summary, without the views over its upload buffer (freed after the round)."""
    return TrainReply(
        node_id=reply.node_id,
        node_name=reply.node_name,
        n_samples=reply.n_samples,
        metrics=reply.metrics,
        losses=reply.losses,
        train_seconds=reply.train_seconds,
        n_steps=reply.n_steps,
    )
