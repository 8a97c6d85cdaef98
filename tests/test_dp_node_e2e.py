"""Node-level DP under SecAgg on real nodes: the noise costs utility, ε is reported, and a
setup that would void the guarantee is refused before any node trains."""

from __future__ import annotations

import json

import pytest

from common.errors import ConfigurationError
from researcher.federated_workflows import Experiment
from researcher.report import load_history, summarize
from researcher.strategies.default_strategy import DefaultStrategy
from tests.conftest import wait_for_nodes, write_tabular_csv
from tests.plans.tabular import LogisticPlan, make_logistic_data

ROUNDS = 2
#: Noise of standard deviation 5 * 0.5 / 3 nodes ~ 0.8 per weight of a 5-weight model: the
#: chance it lands the model nearer the optimum than clear FedAvg is negligible.
NODE_DP = {"type": "node", "clip": 0.5, "noise_multiplier": 5.0, "delta": 1e-5}


def _experiment(dp, folder):
    args = {"num_updates": 3, "batch_size": 1000, **({"dp": dp} if dp else {})}
    return Experiment(
        tags=["#tab"],
        training_plan_class=LogisticPlan,
        training_args=args,
        round_limit=ROUNDS,
        node_selection_strategy=DefaultStrategy(min_nodes=3),
        secagg=True,
        experimentation_folder=str(folder),
    )


@pytest.mark.slow
def test_node_dp_loss_curve_sits_above_the_clear_one_and_epsilon_is_reported(tmp_path, start_node):
    for i, n in enumerate((80, 120, 160)):
        x, y = make_logistic_data(seed=i, n=n)
        csv = write_tabular_csv(tmp_path / f"data{i}.csv", x, y)
        start_node(f"site{i}", datasets=[("tab", ["#tab"], csv, "y")], approve=[LogisticPlan])
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
    assert records[-1].noise_multiplier == pytest.approx(5.0, rel=1e-9)
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
