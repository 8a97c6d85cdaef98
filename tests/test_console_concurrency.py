"""The CLI, the daemon and the console on one node home at the same time corrupt nothing.

A real researcher runs an experiment on the node (the daemon writes its status and the
rounds it serves) while `fedloom node dataset add/remove` processes and console form posts
change the registry and decide plans. Afterwards SQLite's integrity check passes, every
action is in the audit trail exactly once, and every round was served.
"""

from __future__ import annotations

import sqlite3
import threading
from collections import Counter

import numpy as np
import pytest

from common.plan_hash import plan_hash
from node.audit import AuditTrail
from node.plans import PlanRegistry
from node.registry import DatasetRegistry
from node.served import ServedTasks
from researcher.federated_workflows import Experiment
from tests.conftest import (
    NODE_CONNECT_TIMEOUT,
    run_fedloom,
    wait_for_nodes,
    write_tabular_csv,
)
from tests.console_client import console_client
from tests.plans.tabular import LogisticPlan, make_logistic_data

pytestmark = pytest.mark.slow

TAGS = ["#tab"]
#: Rounds of the experiment running during the test; CLI and console act meanwhile.
ROUNDS = 4
#: add+remove pairs done by the CLI and by the console each.
CYCLES = 4


def test_cli_daemon_and_console_share_a_home_without_corruption(
    tmp_path, start_node, start_console
):
    x, y = make_logistic_data(seed=0, n=80)
    data = write_tabular_csv(tmp_path / "a.csv", x, y)
    extra = write_tabular_csv(tmp_path / "extra.csv", x[:10], y[:10])
    node = start_node("clinic", datasets=[("tab", TAGS, data, "y")], approve=[LogisticPlan])
    wait_for_nodes(1)
    console = start_console(node.home)
    db_path = node.home / "node.db"
    plans = PlanRegistry(db_path)
    plan_ids = []
    for i in range(CYCLES):
        source = f"class Plan{i}:\n    pass\n"
        plans.record_request(plan_hash(source), f"Plan{i}", source, "researcher-x")
        plan_ids.append(plan_hash(source)[:12])

    experiment = Experiment(
        tags=TAGS,
        training_plan_class=LogisticPlan,
        training_args={"num_updates": 3, "batch_size": 1000, "random_seed": 0},
        round_limit=ROUNDS,
    )
    failures: list[str] = []

    def cli() -> None:
        for i in range(CYCLES):
            for args in (
                (
                    "dataset",
                    "add",
                    "--name",
                    f"cli{i}",
                    "--tags",
                    "#cli",
                    "--path",
                    str(extra),
                    "--target",
                    "y",
                ),
                ("dataset", "remove", f"cli{i}"),
            ):
                done = run_fedloom(
                    "node", "--home", str(node.home), *args, timeout=NODE_CONNECT_TIMEOUT
                )
                if done.returncode != 0:
                    failures.append(f"cli {args}: {done.stderr}")

    def web() -> None:
        client = console_client(console.url)
        client.login(console.password)
        for i in range(CYCLES):
            token = client.csrf("/datasets")
            steps = [
                (
                    "/datasets",
                    {"name": f"web{i}", "tags": "#web", "path": str(extra), "target": "y"},
                ),
                (f"/plans/{plan_ids[i]}/{'approve' if i % 2 else 'reject'}", {"reason": f"r{i}"}),
                (f"/datasets/web{i}/remove", {}),
            ]
            for path, form in steps:
                status, _, body = client.request(path, {**form, "csrf_token": token})
                if status not in (200, 303):
                    failures.append(f"console {path}: {status} {body[:300]}")
            for page in ("/", "/experiments", "/plans", "/audit"):
                if client.request(page)[0] != 200:
                    failures.append(f"console GET {page}")

    workers = [threading.Thread(target=cli), threading.Thread(target=web)]
    for worker in workers:
        worker.start()
    assert experiment.run() == ROUNDS
    for worker in workers:
        worker.join(timeout=300)
    assert not failures, failures

    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert [d.name for d in DatasetRegistry(db_path).list()] == ["tab"]
    decided = {p.plan_id: p.status for p in plans.list()}
    for i, plan_id in enumerate(plan_ids):
        assert decided[plan_id] == ("approved" if i % 2 else "rejected")
    actions = Counter((e.source, e.action) for e in AuditTrail(db_path).list())
    assert actions == {
        ("cli", "dataset.add"): CYCLES,
        ("cli", "dataset.remove"): CYCLES,
        ("console", "dataset.add"): CYCLES,
        ("console", "dataset.remove"): CYCLES,
        ("console", "plan.approve"): CYCLES // 2,
        ("console", "plan.reject"): CYCLES - CYCLES // 2,
    }
    served = ServedTasks(db_path).list(experiment.id)
    assert [(t.round, t.state, t.n_samples) for t in served] == [
        (r, "ok", 80) for r in range(1, ROUNDS + 1)
    ]
    assert "locked" not in node.log() and "locked" not in "".join(console.output)
    assert np.isfinite([t.last_loss for t in served]).all()
