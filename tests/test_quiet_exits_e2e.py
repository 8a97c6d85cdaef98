"""Normal ends are quiet: no warning, error or traceback when a run ends or a node is stopped."""

from __future__ import annotations

import logging
import signal
import threading
import time

import pytest

from common.constants import RECONNECT_AFTER_SESSION_MAX_DELAY
from researcher.federated_workflows import Experiment
from researcher.server import shutdown_server
from tests.conftest import NODE_CONNECT_TIMEOUT, wait_for_nodes, write_tabular_csv
from tests.plans.faulty import HangingPlan
from tests.plans.tabular import LogisticPlan, make_logistic_data

pytestmark = pytest.mark.slow

TAGS = ["#tab"]

#: Seconds the researcher stays down between two runs in the backoff test.
DOWNTIME_SECONDS = 8.0


def _node(tmp_path, start_node, name: str, plans: list[type]):  # type: ignore[no-untyped-def]
    x, y = make_logistic_data(seed=0, n=60)
    csv = write_tabular_csv(tmp_path / name / "data.csv", x, y)
    return start_node(name, datasets=[("tab", TAGS, csv, "y")], approve=plans)


def test_ctrl_c_on_a_training_node_logs_no_error_and_no_traceback(tmp_path, start_node):
    node = _node(tmp_path, start_node, "hospital", [HangingPlan])
    wait_for_nodes(1)
    exp = Experiment(
        tags=TAGS,
        training_plan_class=HangingPlan,
        training_args={"num_updates": 1, "batch_size": 100, "round_timeout": 60},
        round_limit=1,
        show_progress=False,
    )
    runner = threading.Thread(target=lambda: _swallow(exp.run), daemon=True)
    runner.start()
    assert node.wait_for_log("training", timeout=NODE_CONNECT_TIMEOUT), node.log()
    time.sleep(3.0)  # inside the plan's step
    node.kill(signal.SIGINT)  # what Ctrl-C in the node's terminal sends
    log = node.log() + (node.home / "logs" / "node.log").read_text()
    assert node.proc.returncode == 0, log
    assert "Traceback" not in log and "ERROR" not in log, log
    assert "stopping" in log
    assert "abandoned: the node was stopped during training" in log  # the task was under way
    shutdown_server()
    runner.join(timeout=90)


def test_a_run_that_ends_normally_warns_of_nothing(tmp_path, start_node, caplog):
    nodes = [_node(tmp_path, start_node, name, [LogisticPlan]) for name in ("north", "south")]
    wait_for_nodes(2)
    caplog.set_level(logging.INFO)
    exp = Experiment(
        tags=TAGS,
        training_plan_class=LogisticPlan,
        training_args={"num_updates": 2, "batch_size": 100},
        round_limit=1,
        show_progress=False,
    )
    assert exp.run() == 1
    shutdown_server()  # what `fedloom researcher run` does at its end
    # Down long enough for a plain doubling backoff to reach 8 s between attempts.
    time.sleep(DOWNTIME_SECONDS)
    warnings = [
        r
        for r in caplog.records
        if r.levelno >= logging.WARNING and "(--insecure)" not in r.getMessage()
    ]
    assert warnings == [], [r.getMessage() for r in warnings]
    for node in nodes:
        log = (node.home / "logs" / "node.log").read_text()
        alarms = [line for line in log.splitlines() if " WARNING " in line or " ERROR " in line]
        # The --insecure notices are meant: this test runs without TLS.
        assert [line for line in alarms if "(--insecure)" not in line] == [], log
        assert "ended the session; waiting for its next run" in log

    restarted = time.monotonic()
    wait_for_nodes(2, timeout=NODE_CONNECT_TIMEOUT)  # starts a new server on the same address
    assert time.monotonic() - restarted < RECONNECT_AFTER_SESSION_MAX_DELAY + 2.0


def _swallow(run) -> None:  # type: ignore[no-untyped-def]
    try:
        run()
    except Exception:  # the round fails once the node is gone: not what this test checks
        pass
