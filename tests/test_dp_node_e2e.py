"""Node-level DP under SecAgg on real nodes: the noise costs utility, ε is reported, and a
setup that would void the guarantee is refused before any node trains."""

from __future__ import annotations

import json
import math
import threading

import pytest

from common.errors import ConfigurationError
from researcher.federated_workflows import Experiment
from researcher.report import load_history, summarize
from researcher.strategies.default_strategy import DefaultStrategy
from tests.conftest import wait_for_nodes, write_tabular_csv
from tests.plans.tabular import LogisticPlan, SlowPlan, make_logistic_data

ROUNDS = 2
#: A tight clip on a 5-weight model: the DP model moves at most 0.02 (+ noise of std
#: 0.02 / 3 per weight) a round while clear FedAvg moves ~0.5, so its loss stays well above.
NODE_DP = {"type": "node", "clip": 0.02, "noise_multiplier": 1.0, "delta": 1e-5}


def _experiment(dp, folder, plan=LogisticPlan, min_nodes=3, rounds=ROUNDS, updates=3):
    args = {"num_updates": updates, "batch_size": 1000, **({"dp": dp} if dp else {})}
    return Experiment(
        tags=["#tab"],
        training_plan_class=plan,
        training_args=args,
        round_limit=rounds,
        node_selection_strategy=DefaultStrategy(min_nodes=min_nodes),
        secagg=True,
        experimentation_folder=str(folder),
    )


@pytest.mark.slow
def test_node_dp_loss_curve_sits_above_the_clear_one_and_epsilon_is_reported(tmp_path, start_node):
    nodes = []
    for i, n in enumerate((80, 120, 160)):
        x, y = make_logistic_data(seed=i, n=n)
        csv = write_tabular_csv(tmp_path / f"data{i}.csv", x, y)
        nodes.append(
            start_node(
                f"site{i}",
                datasets=[("tab", ["#tab"], csv, "y")],
                approve=[LogisticPlan, SlowPlan],
            )
        )
    wait_for_nodes(3)
    clear = _experiment(None, tmp_path / "clear")
    clear.run()
    private = _experiment(NODE_DP, tmp_path / "private")
    private.run()

    clear_losses = [r.mean_loss for r in clear.metrics_history()]
    private_losses = [r.mean_loss for r in private.metrics_history()]
    # Round 1 trains from the same initial model; afterwards the noisy aggregate costs loss.
    assert private_losses[0] == pytest.approx(clear_losses[0], rel=1e-6)
    for later in range(1, ROUNDS):
        assert private_losses[later] > clear_losses[later] + 0.01, (private_losses, clear_losses)

    records = [r.node_dp for r in private.metrics_history()]
    assert all(r is not None for r in records)
    epsilons = [r.epsilon for r in records]
    assert epsilons == sorted(epsilons) and epsilons[0] > 0
    assert records[-1].noise_multiplier == pytest.approx(1.0, rel=1e-9)
    assert records[-1].survivors == 3 and records[-1].sample_rate == 1.0
    for reply in private.training_replies()[1].values():
        assert reply["sample_size"] == 0  # uniform weights; no sample count travels

    rows = [
        json.loads(line)
        for line in (private.experimentation_folder() / "metrics.jsonl").read_text().splitlines()
    ]
    dp_rows = [row for row in rows if "node_dp_epsilon" in row]
    assert [row["round"] for row in dp_rows] == [1, 2]
    assert dp_rows[-1]["node_dp_epsilon"] == pytest.approx(epsilons[-1])
    assert dp_rows[-1]["node_dp_delta"] == 1e-5
    summary = summarize(load_history(private.experimentation_folder()))
    assert summary[-1].metrics["node_dp_epsilon"] == pytest.approx(epsilons[-1])

    # A node dies while training, after it received its peers' shares: the two survivors'
    # sum carries 2 of the 3 noise shares, and the accountant charges the round for it.
    victim = nodes[1]
    killer = threading.Thread(target=_kill_when_training, args=(victim,), daemon=True)
    killer.start()
    dropped = _experiment(
        NODE_DP, tmp_path / "dropped", plan=SlowPlan, min_nodes=2, rounds=1, updates=1
    )
    dropped.run()
    killer.join(timeout=5)
    record = dropped.metrics_history()[0]
    assert victim.node_id in record.failures
    assert record.node_dp is not None
    assert (record.node_dp.survivors, record.node_dp.noise_shares) == (2, 3)
    assert record.node_dp.noise_multiplier == pytest.approx(math.sqrt(2 / 3), rel=1e-9)


def _kill_when_training(node):
    """Kill ``node`` as soon as its log says it started training (SlowPlan sleeps 4 s)."""
    if node.wait_for_log("training plan SlowPlan", timeout=120.0):
        node.kill()


def test_node_dp_without_secagg_is_refused_before_any_round(tmp_path):
    exp = Experiment(
        tags=["#tab"],
        training_plan_class=LogisticPlan,
        training_args={"num_updates": 1, "dp": NODE_DP},
        round_limit=1,
        secagg=False,
        experimentation_folder=str(tmp_path / "exp"),
    )
    with pytest.raises(ConfigurationError, match="needs SecAgg"):
        exp.run()
