"""Double-masking SecAgg over real gRPC with real node processes under mutual TLS.

The driver (researcher.secagg) runs against the in-process researcher server through a
minimal TaskExchange over the server's node directory; training goes through the existing
round exchange, so each node's training process opens its shares and masks for real.
"""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from common.payload import encode_arrays
from common.proto import fedloom_pb2 as pb
from common.secagg import SecureAggregation
from common.training_args import TrainingArgs
from common.training_plans.source import plan_hash, plan_source
from researcher.round import NodeReply, PlanInfo, RoundRequest, run_round
from researcher.secagg import (
    ExchangeResult,
    Participant,
    ReceivedReply,
    SecureRoundResult,
    SecureRoundSession,
)
from researcher.server import ResearcherServer, get_server
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
#: Fixed-point error of a weighted sum over 3 nodes is ~1.4e-9 per coordinate.
TOLERANCE = 1e-6


class ServerExchange:
    """A TaskExchange over the researcher server: one task per node, replies by task id."""

    def __init__(self, server: ResearcherServer) -> None:
        self.server = server

    def run_tasks(self, tasks: Mapping[str, pb.TaskRequest], timeout: float) -> ExchangeResult:
        result = ExchangeResult()
        events: queue.Queue[tuple[str, object, object]] = queue.Queue()
        directory = self.server.directory

        def listen(event: str, node: object, payload: object) -> None:
            events.put((event, node, payload))

        directory.add_listener(listen)  # type: ignore[arg-type]
        pending: dict[str, str] = {}
        try:
            for node_id, task in tasks.items():
                node = directory.get(node_id)
                if node is None:
                    result.failures[node_id] = "not connected"
                    continue
                pending[task.task_id] = node_id
                node.send(pb.ResearcherMessage(task=task))
            deadline = time.monotonic() + timeout
            while pending and time.monotonic() < deadline:
                try:
                    event, node, payload = events.get(timeout=0.2)
                except queue.Empty:
                    continue
                if event == "reply" and isinstance(payload, pb.TaskReply):
                    node_id = pending.pop(payload.task_id, "")
                    if node_id:
                        result.replies[node_id] = ReceivedReply(payload)
                elif event == "disconnected":
                    gone = getattr(node, "node_id", "")
                    for task_id in [t for t, n in pending.items() if n == gone]:
                        result.failures[pending.pop(task_id)] = "disconnected"
            result.failures.update({n: "timed out" for n in pending.values()})
        finally:
            directory.remove_listener(listen)  # type: ignore[arg-type]
        return result


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
    server: ResearcherServer, secagg: Mapping[str, pb.SecaggContext], on_reply: object
) -> list[str]:
    source = plan_source(LogisticPlan)
    nodes = sorted(server.directory.connected(), key=lambda n: n.node_id)
    request = RoundRequest(
        experiment_id="e2e",
        round_number=1,
        plan=PlanInfo("LogisticPlan", source, plan_hash(source)),
        global_payload=encode_arrays(
            {"param/weight": np.zeros((1, 4), np.float32), "param/bias": np.zeros(1, np.float32)}
        ),
        aux_vars=pb.AuxVars(),
        training_args_json=TrainingArgs.from_dict({"num_updates": 3, "batch_size": 1000}).to_json(),
        model_args_json=json.dumps({}),
        datasets={n.node_id: "tab" for n in nodes},
        timeout=TIMEOUT,
        secagg=secagg,
    )
    selected = [n for n in nodes if not secagg or n.node_id in secagg]
    return run_round(server, request, selected, on_reply).answered  # type: ignore[arg-type]


def clear_updates(server: ResearcherServer) -> dict[str, tuple[int, dict[str, np.ndarray]]]:
    """Each node's clear update for the same round (training is deterministic)."""
    clear: dict[str, tuple[int, dict[str, np.ndarray]]] = {}

    def keep(reply: NodeReply) -> None:
        params = {k[len("param/") :]: np.array(v) for k, v in reply.arrays.items()}
        clear[reply.node_id] = (reply.n_samples, params)

    train_round(server, {}, keep)
    return clear


def assert_secure_matches(
    result: SecureRoundResult, clear: Mapping[str, tuple[int, dict]], survivors: list[str]
) -> None:
    assert result.total_samples == sum(clear[n][0] for n in survivors)
    assert result.param_sums is not None
    for name, value in result.param_sums.items():
        expected = sum(clear[n][0] * clear[n][1][name].astype(np.float64) for n in survivors)
        np.testing.assert_allclose(value, expected, rtol=0, atol=TOLERANCE)


def secure_round(server: ResearcherServer, kill_after_setup: object = None) -> tuple:
    exchange = ServerExchange(server)
    participants = [Participant(n.node_id, n.label) for n in server.directory.connected()]
    session = SecureRoundSession(SecureAggregation(), "e2e", 1, participants)
    remaining = session.setup(exchange, TIMEOUT)
    if callable(kill_after_setup):
        kill_after_setup()
    answered = train_round(
        server,
        {n: session.train_context(n) for n in remaining},
        lambda reply: session.add_masked(reply.node_id, reply.arrays, reply.aux_vars),
    )
    return session.unmask(exchange, answered, TIMEOUT), answered


def test_secure_fedavg_sum_over_tls_nodes_equals_the_clear_sum(tls_nodes: list) -> None:
    server = get_server()
    clear = clear_updates(server)
    result, answered = secure_round(server)
    assert sorted(answered) == sorted(TLS_NODE_IDS)
    assert_secure_matches(result, clear, list(TLS_NODE_IDS))


def test_a_node_killed_after_share_distribution_leaves_the_exact_sum_of_the_others(
    tls_nodes: list,
) -> None:
    server = get_server()
    clear = clear_updates(server)
    victim = tls_nodes[2]
    result, answered = secure_round(server, kill_after_setup=victim.kill)
    assert victim.node_id not in answered
    assert_secure_matches(result, clear, [n for n in TLS_NODE_IDS if n != victim.node_id])


def test_an_insecure_node_says_once_that_secagg_keys_are_unsigned(
    start_node: NodeFactory, researcher_address: str
) -> None:
    node = start_node("plain")
    wait_for_nodes(1)
    assert node.wait_for_log("connected to researcher")
    assert node.log().count("SecAgg round keys are NOT signed or verified (--insecure)") == 1
