"""Record-level DP end to end: real nodes over loopback gRPC, the node's budget and ledger.

A real researcher runs in this process; nodes are `fedloom node start` processes.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from common.errors import RoundFailedError
from common.privacy import DpSteps, epsilon_spent
from node.privacy_ledger import PrivacyLedger
from researcher.federated_workflows import Experiment
from researcher.history import MetricsLog
from researcher.report import format_number
from researcher.server import get_server
from tests.conftest import (
    fedloom_cmd,
    run_fedloom,
    wait_for_nodes,
    wait_for_reconnect,
    write_tabular_csv,
)
from tests.plans.tabular import LogisticPlan, make_logistic_data

pytestmark = pytest.mark.slow

TAGS = ["#dp"]
N_RECORDS = 200
ARGS = {"num_updates": 10, "batch_size": 20, "random_seed": 0, "log_interval": 0}
DP = {"type": "local", "clip": 0.3, "noise_multiplier": 1.5, "delta": 1e-5}
#: One round's DP-SGD steps on a node: q = batch_size / records, num_updates steps.
ROUND_STEPS = DpSteps(1.5, ARGS["batch_size"] / N_RECORDS, ARGS["num_updates"])


def _csv(tmp_path: Path, seed: int) -> Path:
    x, y = make_logistic_data(seed=seed, n=N_RECORDS)
    return write_tabular_csv(tmp_path / f"data-{seed}.csv", x, y)


def _experiment(dp: dict | None, rounds: int) -> Experiment:
    args = {**ARGS, **({"dp": dp} if dp else {})}
    return Experiment(
        tags=TAGS, training_plan_class=LogisticPlan, training_args=args, round_limit=rounds
    )


def _rows(exp: Experiment) -> list[dict]:
    rows = MetricsLog.read(exp.experimentation_folder() / "metrics.jsonl")
    return [r for r in rows if "failed" not in r]


def _epsilon_after(rounds: int) -> float:
    return epsilon_spent([ROUND_STEPS] * rounds, DP["delta"])


def _node_cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        fedloom_cmd("node", "--home", str(home), *args),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_dp_loss_sits_above_the_clear_loss_and_epsilon_reaches_metrics_and_report(
    tmp_path, start_node
):
    for seed, name in enumerate(("north", "south")):
        start_node(
            name, datasets=[("tab", TAGS, _csv(tmp_path, seed), "y")], approve=[LogisticPlan]
        )
    wait_for_nodes(2)
    clear, private = _experiment(None, 2), _experiment(DP, 2)
    assert clear.run() == 2
    assert private.run() == 2

    def mean_loss(exp: Experiment, round_number: int) -> float:
        losses = [r["loss"] for r in _rows(exp) if r["round"] == round_number]
        return sum(losses) / len(losses)

    for round_number in (1, 2):
        assert mean_loss(private, round_number) > mean_loss(clear, round_number) + 0.02
    assert all(r["dp_epsilon"] is None for r in _rows(clear))
    for row in _rows(private):
        assert row["dp_epsilon"] == pytest.approx(_epsilon_after(row["round"]), rel=1e-9)

    report = run_fedloom("researcher", "report", str(private.experimentation_folder()), "--json")
    assert report.returncode == 0, report.stderr
    rounds = json.loads(report.stdout)["rounds"]
    assert [r["dp_epsilon"] for r in rounds] == pytest.approx([_epsilon_after(r) for r in (1, 2)])
    table = run_fedloom("researcher", "report", str(private.experimentation_folder()))
    assert "DP ε" in table.stdout and format_number(_epsilon_after(2)) in table.stdout


def _refusal(exp: Experiment, **run: object) -> str:
    with pytest.raises(RoundFailedError) as info:
        exp.run(**run)
    return str(info.value)


def test_an_exhausted_budget_refuses_the_round_keeps_the_ledger_and_survives_a_restart(
    tmp_path, start_node
):
    node = start_node(
        "clinic", datasets=[("tab", TAGS, _csv(tmp_path, 0), "y")], approve=[LogisticPlan]
    )
    one, two = _epsilon_after(1), _epsilon_after(2)
    budget = (one + two) / 2  # room for one round, not two
    set_budget = _node_cli(
        node.home, "dataset", "budget", "tab", "--epsilon", f"{budget}", "--delta", "1e-5"
    )
    assert set_budget.returncode == 0, set_budget.stderr
    wait_for_nodes(1)
    ledger = PrivacyLedger(_db(node.home))

    assert "DpRequired" in _refusal(_experiment(None, 1))  # a budget means records are protected
    private = _experiment(DP, 1)
    assert private.run() == 1
    assert ledger.history("tab") == [ROUND_STEPS]

    message = _refusal(private, rounds=1, increase=True)
    assert "PrivacyBudgetExceeded" in message
    assert f"ε = {budget:g} at δ = 1e-05 per experiment" in message
    assert f"ε already spent: {one:.3f}" in message
    assert "dataset budget tab --epsilon" in message
    assert ledger.history("tab") == [ROUND_STEPS]  # the refused round spent nothing

    listed = json.loads(_node_cli(node.home, "dataset", "list", "--json").stdout)
    assert listed[0]["privacy_budget"]["spent_max"] == pytest.approx(one)

    old = get_server().directory.get(node.node_id)
    node.kill()
    restarted = start_node("clinic", home=node.home)
    wait_for_reconnect(node.node_id, old)
    assert f"ε already spent: {one:.3f}" in _refusal(private)  # the ledger survived

    raised = _node_cli(
        node.home, "dataset", "budget", "tab", "--epsilon", f"{2 * two}", "--delta", "1e-5"
    )
    assert raised.returncode == 0, raised.stderr
    assert private.run() == 1  # round 2, now within the budget
    assert ledger.history("tab") == [ROUND_STEPS, ROUND_STEPS]
    assert _rows(private)[-1]["dp_epsilon"] == pytest.approx(two, rel=1e-9)
    assert restarted.proc.poll() is None


def _db(home: Path) -> Path:
    from node.home import NodeHome

    return NodeHome.open(home).db_path
