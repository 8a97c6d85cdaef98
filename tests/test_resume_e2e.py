"""A researcher SIGKILLed after round 2 and resumed with --resume ends where an uninterrupted run does.

FedYogi (with the Scaffold server) on the researcher, Adam + Scaffold on the nodes, full
batch with a fixed seed: every round is deterministic, so the resumed run must end with
exactly the global parameters of one uninterrupted 4-round run.

The nodes stay up throughout. The plan trains only after taking a "ticket" file from its
node's folder, so the test decides how far training goes: with two tickets per node, round
3 reaches the nodes, the researcher is killed, and round 3 finds no ticket and fails
without touching the node's optimizer state, which is what a node must do with a round
whose researcher died.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from researcher.checkpoint import latest_checkpoint, read_checkpoint_state
from researcher.plan_loader import load_plan_class
from tests.conftest import ROOT, fedloom_cmd, write_tabular_csv
from tests.plans.tabular import make_logistic_data

pytestmark = [pytest.mark.slow, pytest.mark.faults]

EXAMPLE_PLAN = ROOT / "examples" / "fedyogi_scaffold" / "plan.py"

#: Seconds a whole researcher run may take (process start, nodes reconnecting, 4 rounds).
RUN_TIMEOUT = 300

TICKETED_PLAN = '''

import time
from pathlib import Path


class TicketedPlan(LogisticScaffoldPlan):
    """Trains only after taking a file from `tickets/` next to its dataset (3 s at most)."""

    def init_dependencies(self):
        return [*super().init_dependencies(), "import time", "from pathlib import Path"]

    def training_step(self, data, target):
        if not getattr(self, "_has_ticket", False):
            tickets = Path(self.dataset_path).parent / "tickets"
            deadline = time.monotonic() + 3.0
            while not (found := sorted(tickets.glob("ticket-*"))):
                if time.monotonic() > deadline:
                    raise RuntimeError("no ticket: the test holds this round")
                time.sleep(0.05)
            found[0].unlink()
            self._has_ticket = True
        return super().training_step(data, target)
'''

EXPERIMENT = """\
name = "{name}"
tags = ["#tab"]
rounds = 4

[plan]
file = "{plan}"
class = "TicketedPlan"

[model_args]
n_features = 4

[training_args]
num_updates = 4
batch_size = 100000
random_seed = 3
test_ratio = 0.25
test_on_local_updates = true
round_timeout = 120

[agg_optimizer]
lr = 0.05
modules = ["scaffold-server", "yogi"]

[strategy]
name = "default"
min_nodes = 2
"""


def _give_tickets(folder: Path, count: int) -> None:
    tickets = folder / "tickets"
    tickets.mkdir(parents=True, exist_ok=True)
    start = len(list(tickets.glob("*"))) + int(time.time() * 1000)
    for i in range(count):
        (tickets / f"ticket-{start + i}").touch()


def _researcher(
    toml: Path, address: str, out: Path, log: Path, *extra: str
) -> subprocess.Popen[bytes]:
    args = (
        "researcher",
        "run",
        str(toml),
        "--address",
        address,
        "--insecure",
        "--out",
        str(out),
        *extra,
    )
    with open(log, "ab") as log_file:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            fedloom_cmd(*args), stdout=log_file, stderr=subprocess.STDOUT, cwd=ROOT
        )


def _wait_for(
    predicate, what: str, proc: subprocess.Popen[bytes] | None = None, timeout: float = RUN_TIMEOUT
) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"researcher exited with {proc.returncode} before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(
    "orphan_round_completes",
    [False, True],
    ids=["orphaned-round-dropped-on-nodes", "orphaned-round-completed-on-nodes"],
)
def test_sigkilled_researcher_resumes_to_the_same_global_params_as_an_uninterrupted_run(
    tmp_path, start_node, researcher_address, orphan_round_completes
):
    """Round 3 reaches the nodes, then the researcher is SIGKILLed. Either the nodes drop
    round 3 (no ticket) or they finish it and save its optimizer state (reply lost): the
    resumed run must not pick up that orphaned state."""
    plan_file = tmp_path / "plan.py"
    plan_file.write_text(EXAMPLE_PLAN.read_text() + TICKETED_PLAN, encoding="utf-8")
    plan_class = load_plan_class(plan_file, "TicketedPlan")
    out = tmp_path / "runs"
    tomls = {}
    for name in ("straight", "killed"):
        tomls[name] = tmp_path / f"{name}.toml"
        tomls[name].write_text(EXPERIMENT.format(name=name, plan=plan_file), encoding="utf-8")
    nodes = []
    for i, n in enumerate((90, 150)):
        x, y = make_logistic_data(seed=10 + i, n=n)
        csv = write_tabular_csv(tmp_path / f"site{i}" / "data.csv", x, y)
        nodes.append(
            start_node(
                f"site{i}",
                datasets=[("tab", ["#tab"], csv, "y")],
                approve=[plan_class],
                address=researcher_address,
                # The plan takes its ticket by removing a file beside its dataset: a write
                # outside its box, which plan containment refuses (by design).
                extra_args=["--confinement", "off"],
            )
        )
    data_dirs = [tmp_path / f"site{i}" for i in range(2)]

    # One uninterrupted run of 4 rounds.
    for folder in data_dirs:
        _give_tickets(folder, 4)
    straight = _researcher(tomls["straight"], researcher_address, out, tmp_path / "straight.log")
    assert straight.wait(timeout=RUN_TIMEOUT) == 0, (tmp_path / "straight.log").read_text()[-4000:]

    # The same experiment, SIGKILLed once round 2 is checkpointed and round 3 reached the nodes.
    for folder in data_dirs:
        _give_tickets(folder, 2)
    killed_log = tmp_path / "killed.log"
    killed_dir = out / "killed"
    killed = _researcher(tomls["killed"], researcher_address, out, killed_log)
    round_2 = killed_dir / "checkpoints" / "round-000002"
    _wait_for(lambda: (round_2 / "state.json").exists(), "round 2's checkpoint", killed)
    experiment_id = read_checkpoint_state(round_2)["experiment_id"]
    for node in nodes:
        _wait_for(
            lambda node=node: f"round 3 of {experiment_id}" in node.log(),
            f"round 3 on {node.name}",
            killed,
        )
    killed.kill()
    killed.wait(timeout=30)
    assert latest_checkpoint(killed_dir) == round_2
    if orphan_round_completes:
        # Round 3 gets its ticket and completes on every node; its reply has nowhere to go.
        for folder in data_dirs:
            _give_tickets(folder, 1)
        for node in nodes:
            _wait_for(
                lambda node=node: "reply dropped" in node.log() or "not connected" in node.log(),
                f"{node.name} to finish round 3",
            )
    else:
        # Round 3 finds no ticket and fails on each node; its optimizer state stays at round 2.
        for node in nodes:
            _wait_for(
                lambda node=node: "no ticket: the test holds this round" in node.log(),
                f"{node.name} to drop round 3",
            )

    for folder in data_dirs:
        _give_tickets(folder, 2)
    resumed = _researcher(tomls["killed"], researcher_address, out, killed_log, "--resume")
    assert resumed.wait(timeout=RUN_TIMEOUT) == 0, killed_log.read_text()[-4000:]

    assert read_checkpoint_state(latest_checkpoint(killed_dir))["experiment_id"] == experiment_id
    expected = np.load(out / "straight" / "final_params.npz", allow_pickle=False)
    got = np.load(killed_dir / "final_params.npz", allow_pickle=False)
    assert sorted(got.files) == sorted(expected.files) == ["bias", "weight"]
    for name in expected.files:
        np.testing.assert_array_equal(got[name], expected[name])
    initial = plan_class()
    initial.post_init({"n_features": 4}, initial.training_args().replace(random_seed=3))
    assert not np.array_equal(got["weight"], initial.get_parameters()["weight"])  # it did train

    def losses(rows: list[dict]) -> list[tuple[int, str, float]]:
        return sorted((r["round"], r["node_name"], r["loss"]) for r in rows)

    assert losses(_rows(killed_dir)) == losses(_rows(out / "straight"))
    assert [r["round"] for r in _rows(killed_dir)].count(
        3
    ) == 2  # round 3 once per node, no leftovers
    assert os.path.exists(killed_dir / "checkpoints" / "round-000004")
