"""Round deadlines and the failure policy, with real node processes.

A node still training at the deadline is dropped from the round with its reason; a node
that trains longer than the heartbeat timeout but within the deadline is slow, not dead;
the strategy decides whether the answers that did come are enough.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from common.constants import HEARTBEAT_TIMEOUT
from common.errors import RoundFailedError
from researcher.checkpoint import latest_checkpoint
from researcher.federated_workflows import Experiment
from researcher.strategies import DefaultStrategy
from tests.conftest import wait_for_nodes, write_tabular_csv
from tests.plans.tabular import LogisticPlan, make_logistic_data

pytestmark = pytest.mark.slow

#: Shortest round deadline of the tests. The deadline actually used is also at least three
#: times a warm-up round, so a quick node answers in time even on a loaded machine.
MIN_DEADLINE = 8.0


class NapPlan(LogisticPlan):
    """Sleeps `N` seconds per step on nodes whose dataset file is named `nap<N>...`."""

    def init_dependencies(self):
        return [*super().init_dependencies(), "import re", "import time"]

    def training_step(self, data, target):
        import re
        import time

        match = re.search(r"nap(\d+)", str(self.dataset_path))
        if match:
            time.sleep(float(match.group(1)))
        return super().training_step(data, target)


def _nodes(tmp_path: Path, start_node, naps: dict[str, int]) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Start one node per name (sleeping naps[name] s per step); return name -> node id."""
    ids = {}
    for i, (name, nap) in enumerate(naps.items()):
        x, y = make_logistic_data(seed=i, n=40)
        csv = write_tabular_csv(tmp_path / f"nap{nap}-{name}.csv", x, y)
        approve = [NapPlan, LogisticPlan]
        ids[name] = start_node(
            name, datasets=[("tab", ["#tab"], csv, "y")], approve=approve
        ).node_id
    wait_for_nodes(len(naps))
    return ids


def _deadline_after_warm_up(n_nodes: int) -> float:
    """Run one round of the plain plan (each node's first task pays for imports) and return
    a deadline comfortably above what a quick node now needs."""
    warm_up = Experiment(
        tags=["#tab"],
        training_plan_class=LogisticPlan,
        training_args={"num_updates": 1},
        round_limit=1,
        node_selection_strategy=DefaultStrategy(min_nodes=n_nodes),
    )
    warm_up.run()
    return max(MIN_DEADLINE, 3 * warm_up.metrics_history()[0].seconds)


def test_a_node_past_the_deadline_is_dropped_with_its_reason_and_the_round_goes_on(
    tmp_path, start_node
):
    ids = _nodes(tmp_path, start_node, {"quick": 0, "stuck": 300})
    deadline = _deadline_after_warm_up(2)
    exp = Experiment(
        tags=["#tab"],
        training_plan_class=NapPlan,
        training_args={"num_updates": 1, "round_timeout": deadline},
        round_limit=1,
        node_selection_strategy=DefaultStrategy(min_nodes=1),
    )
    started = time.monotonic()
    assert exp.run() == 1
    assert time.monotonic() - started < deadline + 10  # the deadline plus slack, not the 300 s nap

    record = exp.metrics_history()[0]
    assert [n.node for n in record.nodes] == [ids["quick"]]
    assert "round deadline passed" in record.failures[ids["stuck"]]
    assert record.seconds == pytest.approx(deadline, abs=1.5)
    assert list(exp.training_replies()[1]) == [ids["quick"]]


def test_too_few_answers_fail_the_round_naming_the_node_and_leave_nothing_blocking_a_rerun(
    tmp_path, start_node
):
    _nodes(tmp_path, start_node, {"quick": 0, "stuck": 300})
    deadline = _deadline_after_warm_up(2)
    exp = Experiment(
        tags=["#tab"],
        training_plan_class=NapPlan,
        training_args={"num_updates": 1, "round_timeout": deadline},
        round_limit=2,
        node_selection_strategy=DefaultStrategy(min_nodes=2),
    )
    with pytest.raises(RoundFailedError) as info:
        exp.run()
    message = str(info.value)
    assert "only 1 node(s) answered, at least 2 needed" in message
    assert "stuck" in message and "round deadline passed" in message
    assert exp.round_current() == 0
    assert exp.metrics_history() == []
    # The run failed before round 1 completed: no checkpoint stands in the way of a rerun.
    assert latest_checkpoint(exp.experimentation_folder()) is None


def test_a_node_training_longer_than_the_heartbeat_timeout_is_slow_not_dead(tmp_path, start_node):
    nap = int(HEARTBEAT_TIMEOUT) + 2
    ids = _nodes(tmp_path, start_node, {"slow": nap, "quick": 0})
    exp = Experiment(
        tags=["#tab"],
        training_plan_class=NapPlan,
        training_args={"num_updates": 1, "round_timeout": 120.0},
        round_limit=1,
        node_selection_strategy=DefaultStrategy(min_nodes=2),
    )
    assert exp.run() == 1
    record = exp.metrics_history()[0]
    assert record.failures == {}
    assert {n.node for n in record.nodes} == set(ids.values())
    assert record.seconds > nap
