"""A real researcher (in this process) and real node processes over loopback gRPC."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from common.errors import NoMatchingNodesError, RoundFailedError
from researcher.aggregators import FedAverage
from researcher.federated_workflows import Experiment
from researcher.strategies.default_strategy import DefaultStrategy
from tests.conftest import wait_for_nodes, write_tabular_csv
from tests.plans.tabular import LogisticPlan, RaisingPlan, SlowPlan, make_logistic_data

pytestmark = pytest.mark.slow


def _logistic_loss(params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    z = x @ params["weight"].reshape(-1).astype(np.float64) + float(params["bias"][0])
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def _three_nodes(
    tmp_path: Path, start_node, plans=(LogisticPlan,)
) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for i, n in enumerate((60, 120, 240)):
        x, y = make_logistic_data(seed=i, n=n)
        xs.append(x)
        ys.append(y)
        csv = write_tabular_csv(tmp_path / f"data{i}.csv", x, y)
        start_node(f"node{i}", datasets=[("tab", ["#tab"], csv, "y")], approve=plans)
    wait_for_nodes(3)
    return np.concatenate(xs), np.concatenate(ys)


class _ReleaseCountingFedAverage(FedAverage):
    releases = 0

    def release(self) -> None:
        self.releases += 1
        super().release()


def test_fedavg_lowers_global_loss_and_equals_the_sample_weighted_mean(tmp_path, start_node):
    x_all, y_all = _three_nodes(tmp_path, start_node)
    aggregator = _ReleaseCountingFedAverage()
    exp = Experiment(
        tags=["#tab"],
        training_plan_class=LogisticPlan,
        training_args={"num_updates": 5, "batch_size": 1000},
        round_limit=3,
        node_selection_strategy=DefaultStrategy(min_nodes=3),
        retain_node_params=True,
        aggregator=aggregator,
    )
    initial = exp.training_plan().get_parameters()
    assert exp.run() == 3
    # Rounds 2 and 3 folded into the buffer of the round before (checked below against
    # each round's replies); the run let it go at its end.
    assert aggregator.releases == 1

    losses = [_logistic_loss(initial, x_all, y_all)]
    for rnd in (1, 2, 3):
        replies = exp.training_replies()[rnd]
        assert len(replies) == 3
        total = sum(r["sample_size"] for r in replies.values())
        assert total == 420
        expected = {
            name: sum(
                r["sample_size"] * r["params"][name].astype(np.float64) for r in replies.values()
            )
            / total
            for name in initial
        }
        got = exp.aggregated_params()[rnd]["params"]
        for name in initial:
            np.testing.assert_allclose(got[name], expected[name], rtol=1e-6, atol=1e-7)
        losses.append(_logistic_loss(got, x_all, y_all))
    assert losses[1] < losses[0] and losses[3] < losses[1], losses
    assert (exp.experimentation_folder() / "metrics.jsonl").exists()
    assert (exp.experimentation_folder() / "final_params.npz").exists()


def test_a_node_killed_mid_round_is_reported_by_name(tmp_path, start_node):
    nodes = []
    for i in range(3):
        x, y = make_logistic_data(seed=i, n=50)
        csv = write_tabular_csv(tmp_path / f"d{i}.csv", x, y)
        nodes.append(
            start_node(f"site{i}", datasets=[("tab", ["#tab"], csv, "y")], approve=[SlowPlan])
        )
    wait_for_nodes(3)
    exp = Experiment(
        tags=["#tab"],
        training_plan_class=SlowPlan,
        training_args={"num_updates": 1},
        round_limit=1,
        node_selection_strategy=DefaultStrategy(min_nodes=3),
    )
    exp.set_strategy(DefaultStrategy(min_nodes=2))
    victim = nodes[1]
    killer = threading.Timer(2.0, victim.kill)
    killer.start()
    exp.run()
    killer.join()
    record = exp.metrics_history()[0]
    assert victim.node_id in record.failures
    assert len(record.nodes) == 2
    assert {r.node for r in record.nodes} == {nodes[0].node_id, nodes[2].node_id}


def test_plan_raising_on_node_reports_node_and_traceback_and_node_stays_up(tmp_path, start_node):
    x, y = make_logistic_data(seed=0, n=40)
    csv = write_tabular_csv(tmp_path / "d.csv", x, y)
    start_node(
        "clinic", datasets=[("tab", ["#tab"], csv, "y")], approve=[RaisingPlan, LogisticPlan]
    )
    wait_for_nodes(1)
    exp = Experiment(
        tags=["#tab"],
        training_plan_class=RaisingPlan,
        training_args={"num_updates": 1},
        round_limit=1,
    )
    with pytest.raises(RoundFailedError) as info:
        exp.run()
    message = str(info.value)
    assert "clinic" in message
    assert "unparseable values" in message
    assert "training_data" in message  # the traceback summary points at the failing method

    ok = Experiment(
        tags=["#tab"],
        training_plan_class=LogisticPlan,
        training_args={"num_updates": 1},
        round_limit=1,
    )
    assert ok.run() == 1


def test_no_node_with_the_tags_names_the_tags_and_the_connected_nodes(tmp_path, start_node):
    x, y = make_logistic_data(seed=0, n=40)
    csv = write_tabular_csv(tmp_path / "d.csv", x, y)
    start_node("lab", datasets=[("tab", ["#tab"], csv, "y")])
    wait_for_nodes(1)
    exp = Experiment(
        tags=["#mri"], training_plan_class=LogisticPlan, round_limit=1, node_wait_timeout=1.0
    )
    with pytest.raises(NoMatchingNodesError) as info:
        exp.run()
    assert "#mri" in str(info.value)
    assert "lab" in str(info.value) and "#tab" in str(info.value)


def test_node_retries_while_the_researcher_is_down_then_connects(
    tmp_path, start_node, researcher_address
):
    x, y = make_logistic_data(seed=0, n=40)
    csv = write_tabular_csv(tmp_path / "d.csv", x, y)
    node = start_node("early", datasets=[("tab", ["#tab"], csv, "y")])
    deadline = time.monotonic() + 60
    while "unreachable" not in node.log() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "unreachable" in node.log() and "retrying" in node.log()
    wait_for_nodes(1)  # starts the server; the node's backoff loop finds it
    assert node.proc.poll() is None
