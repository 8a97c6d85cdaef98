"""Double-masking SecAgg over real gRPC with real node processes under mutual TLS.

The driver (researcher.secagg) runs on the round engine's own exchange
(researcher.rounds.exchange.GrpcExchange) for every phase, training included, so each node's
training process opens its shares and masks for real.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from common.payload import encode_sections
from common.proto import fedloom_pb2 as pb
from common.secagg import SecureAggregation
from common.training_args import TrainingArgs
from common.training_plans.source import plan_hash, plan_source
from researcher.rounds.exchange import GrpcExchange, ReceivedReply
from researcher.secagg import Participant, SecureRoundResult, SecureRoundSession
from researcher.server import get_server
from tests.conftest import (
    TLS_NODE_IDS,
    NodeFactory,
    TlsResearcher,
    tls_args,
    wait_for_nodes,
    write_tabular_csv,
)
from tests.plans.tabular import LogisticPlan, make_logistic_data

pytestmark = pytest.mark.slow

SIZES = (60, 120, 240)
TIMEOUT = 60.0
#: Fixed-point error of a weighted sum over 3 nodes is ~1.7e-9 per coordinate.
TOLERANCE = 1e-6


@pytest.fixture
def tls_nodes(tmp_path: Path, tls_researcher: TlsResearcher, start_node: NodeFactory) -> list:
    nodes = []
    for i, (node_id, n) in enumerate(zip(TLS_NODE_IDS, SIZES, strict=True)):
        x, y = make_logistic_data(seed=i, n=n)
        csv = write_tabular_csv(tmp_path / f"data{i}.csv", x, y)
        nodes.append(
            start_node(
                f"site{i}",
                datasets=[("tab", ["#tab"], csv, "y")],
                approve=[LogisticPlan],
                node_id=node_id,
                insecure=False,
                extra_args=tls_args(tls_researcher.certs.node(node_id)),
            )
        )
    wait_for_nodes(3)
    return nodes


def train_round(
    exchange: GrpcExchange, secagg: Mapping[str, pb.SecaggContext], on_reply: object
) -> list[str]:
    """One training round on every connected node (or those with a SecAgg context)."""
    source = plan_source(LogisticPlan)
    nodes = sorted(exchange.connected(), key=lambda n: n.node_id)
    selected = [n.node_id for n in nodes if not secagg or n.node_id in secagg]
    params = {"weight": np.zeros((1, 4), np.float32), "bias": np.zeros(1, np.float32)}
    payload_id = exchange.publish(encode_sections({pb.PAYLOAD_SECTION_PARAMS: params}), selected)
    tasks = {}
    for node in selected:
        train = pb.TrainRequest(
            plan=pb.TrainingPlanSource(
                class_name="LogisticPlan", sha256=plan_hash(source), source=source
            ),
            params_payload_id=payload_id,
            training_args_json=TrainingArgs.from_dict(
                {"num_updates": 3, "batch_size": 1000}
            ).to_json(),
            model_args_json=json.dumps({}),
            dataset_name="tab",
        )
        if secagg:
            train.secagg.CopyFrom(secagg[node])
        tasks[node] = pb.TaskRequest(
            experiment_id="e2e", round=1, timeout_seconds=TIMEOUT, train=train
        )
    try:
        return exchange.run_tasks(tasks, TIMEOUT, on_reply).answered  # type: ignore[arg-type]
    finally:
        exchange.unpublish(payload_id)


def clear_updates(exchange: GrpcExchange) -> dict[str, tuple[int, dict[str, np.ndarray]]]:
    """Each node's clear update for the same round (training is deterministic)."""
    clear: dict[str, tuple[int, dict[str, np.ndarray]]] = {}

    def keep(received: ReceivedReply) -> None:
        sent = received.sections[pb.PAYLOAD_SECTION_PARAMS]
        params = {k: np.array(v) for k, v in sent.items()}
        clear[received.node_id] = (int(received.reply.n_samples), params)

    train_round(exchange, {}, keep)
    return clear


def assert_secure_matches(
    result: SecureRoundResult, clear: Mapping[str, tuple[int, dict]], survivors: list[str]
) -> None:
    assert result.total_samples == sum(clear[n][0] for n in survivors)
    assert result.param_sums is not None
    for name, value in result.param_sums.items():
        expected = sum(clear[n][0] * clear[n][1][name].astype(np.float64) for n in survivors)
        np.testing.assert_allclose(value, expected, rtol=0, atol=TOLERANCE)


def secure_round(exchange: GrpcExchange, kill_after_setup: object = None) -> tuple:
    participants = [Participant(n.node_id, n.label) for n in exchange.connected()]
    session = SecureRoundSession(SecureAggregation(), "e2e", 1, participants)
    remaining = session.setup(exchange, TIMEOUT)
    if callable(kill_after_setup):
        kill_after_setup()
    answered = train_round(
        exchange,
        {n: session.train_context(n) for n in remaining},
        lambda received: session.add_masked(
            received.node_id, received.sections, received.reply.aux_vars
        ),
    )
    return session.unmask(exchange, answered, TIMEOUT), answered


def test_secure_fedavg_sum_over_tls_nodes_equals_the_clear_sum(tls_nodes: list) -> None:
    exchange = GrpcExchange(get_server())
    clear = clear_updates(exchange)
    result, answered = secure_round(exchange)
    assert sorted(answered) == sorted(TLS_NODE_IDS)
    assert_secure_matches(result, clear, list(TLS_NODE_IDS))


def test_a_node_killed_after_share_distribution_leaves_the_exact_sum_of_the_others(
    tls_nodes: list,
) -> None:
    exchange = GrpcExchange(get_server())
    clear = clear_updates(exchange)
    victim = tls_nodes[2]
    result, answered = secure_round(exchange, kill_after_setup=victim.kill)
    assert victim.node_id not in answered
    assert_secure_matches(result, clear, [n for n in TLS_NODE_IDS if n != victim.node_id])


def test_an_insecure_node_says_once_that_secagg_keys_are_unsigned(
    start_node: NodeFactory, researcher_address: str
) -> None:
    node = start_node("plain")
    wait_for_nodes(1)
    assert node.wait_for_log("connected to researcher")
    assert node.log().count("SecAgg round keys are NOT signed or verified (--insecure)") == 1
