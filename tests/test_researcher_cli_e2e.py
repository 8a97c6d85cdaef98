"""`fedloom researcher run X.toml | datasets | report` as a user runs them, with real nodes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from researcher.checkpoint import list_checkpoints, read_checkpoint_state
from researcher.federated_workflows import Experiment
from researcher.plan_loader import load_plan_class
from tests.conftest import ROOT, fedloom_cmd, write_tabular_csv
from tests.plans.tabular import make_logistic_data

pytestmark = pytest.mark.slow

EXAMPLE_PLAN = ROOT / "examples" / "fedyogi_scaffold" / "plan.py"

#: Seconds a whole `fedloom researcher run` may take in these tests (node start-up included).
RUN_TIMEOUT = 240


def _experiment_toml(tmp_path: Path, name: str, rounds: int) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(
        f"""\
name = "{name}"
tags = ["#tab"]
rounds = {rounds}
keep_checkpoints = 2

[plan]
file = "{EXAMPLE_PLAN}"
class = "LogisticScaffoldPlan"

[model_args]
n_features = 4

[training_args]
num_updates = 3
batch_size = 100000
random_seed = 0
test_ratio = 0.25
test_on_local_updates = true
test_on_global_updates = true
round_timeout = 120

[agg_optimizer]
lr = 0.1
modules = ["scaffold-server", "yogi"]

[strategy]
name = "default"
min_nodes = 2
""",
        encoding="utf-8",
    )
    return path


def _start_nodes(tmp_path: Path, start_node, address: str) -> list:  # type: ignore[no-untyped-def]
    plan_class = load_plan_class(EXAMPLE_PLAN, "LogisticScaffoldPlan")
    nodes = []
    for i, (name, n) in enumerate((("north", 80), ("south", 160))):
        x, y = make_logistic_data(seed=i, n=n)
        csv = write_tabular_csv(tmp_path / name / "data.csv", x, y)
        other = write_tabular_csv(tmp_path / name / "other.csv", x[:10], y[:10])
        nodes.append(
            start_node(
                name,
                datasets=[("tab", ["#tab"], csv, "y"), ("scratch", ["#other"], other, "y")],
                approve=[plan_class],
                address=address,
            )
        )
    return nodes


def _run(*args: str, timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        fedloom_cmd("researcher", *args),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
        env=env,
    )


def _rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_toml_run_with_round_override_then_report_then_resume(
    tmp_path, start_node, researcher_address
):
    toml = _experiment_toml(tmp_path, "tabular", rounds=3)
    out = tmp_path / "runs"
    server = ("--address", researcher_address, "--insecure", "--out", str(out))
    _start_nodes(tmp_path, start_node, researcher_address)

    first = _run("run", str(toml), *server, "--rounds", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    folder = out / "tabular"
    rows = _rows(folder)
    assert sorted((r["round"], r["node_name"]) for r in rows) == [
        (1, "north"),
        (1, "south"),
        (2, "north"),
        (2, "south"),
    ]
    for row in rows:
        assert row["loss"] > 0 and row["n_steps"] == 3
        assert {"local_accuracy", "local_f1", "global_accuracy", "global_f1"} <= set(row["metrics"])
    assert [p.name for p in list_checkpoints(folder)] == ["round-000001", "round-000002"]
    assert (folder / "experiment.toml").read_text() == toml.read_text()
    assert "mean train loss" in first.stdout and "local_accuracy" in first.stdout
    experiment_id = read_checkpoint_state(list_checkpoints(folder)[-1])["experiment_id"]

    report = _run("report", str(folder), "--json")
    assert report.returncode == 0, report.stderr
    summary = json.loads(report.stdout)
    assert matplotlib.image.imread(summary["png"]).ndim == 3
    for entry in summary["rounds"]:
        answered = [r for r in rows if r["round"] == entry["round"]]
        total = sum(r["n_samples"] for r in answered)
        assert entry["answered"] == 2 and entry["failed"] == 0
        assert entry["mean_loss"] == pytest.approx(
            sum(r["loss"] * r["n_samples"] for r in answered) / total, rel=1e-12
        )
        accuracy = sum(r["metrics"]["local_accuracy"] * r["n_samples"] for r in answered) / total
        assert entry["metrics"]["local_accuracy"] == pytest.approx(accuracy, rel=1e-12)

    again = _run("run", str(toml), *server)
    assert again.returncode == 2
    assert (
        f"already holds experiment {experiment_id}" in again.stderr and "--resume" in again.stderr
    )

    resumed = _run("run", str(toml), *server, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert sorted({r["round"] for r in _rows(folder)}) == [1, 2, 3]
    assert len(_rows(folder)) == 6
    last = list_checkpoints(folder)[-1]
    assert last.name == "round-000003"
    assert read_checkpoint_state(last)["experiment_id"] == experiment_id
    assert "rounds 3 to 3" in resumed.stderr


def test_datasets_lists_the_matching_datasets_of_each_connected_node(
    tmp_path, start_node, researcher_address
):
    listing = subprocess.Popen(
        fedloom_cmd(
            "researcher",
            "datasets",
            "--tags",
            "#tab",
            "--wait",
            "90",
            "--expect",
            "2",
            "--json",
            "--address",
            researcher_address,
            "--insecure",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    nodes = _start_nodes(tmp_path, start_node, researcher_address)
    stdout, stderr = listing.communicate(timeout=RUN_TIMEOUT)
    assert listing.returncode == 0, stderr
    rows = json.loads(stdout)
    assert sorted((r["node"], r["node_id"], r["dataset"]) for r in rows) == sorted(
        (n.name, n.node_id, "tab") for n in nodes
    )
    by_node = {r["node"]: r for r in rows}
    assert by_node["north"]["samples"] == 80 and by_node["south"]["samples"] == 160
    assert by_node["north"]["tags"] == ["#tab"] and by_node["north"]["shape"] == [80, 5]


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_stops_the_run_and_leaves_a_loadable_checkpoint(
    tmp_path, start_node, researcher_address
):
    toml = _experiment_toml(tmp_path, "interrupted", rounds=50)
    out = tmp_path / "runs"
    log_path = tmp_path / "researcher.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            fedloom_cmd(
                "researcher",
                "run",
                str(toml),
                "--address",
                researcher_address,
                "--insecure",
                "--out",
                str(out),
            ),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            # A shell without job control starts background jobs with SIGINT ignored, and
            # Python then keeps it ignored: give the run the default a terminal's Ctrl-C
            # finds, whatever way the test suite itself was launched.
            preexec_fn=_default_sigint,
        )
        _start_nodes(tmp_path, start_node, researcher_address)
        folder = out / "interrupted"
        deadline = time.monotonic() + RUN_TIMEOUT
        while not (folder / "checkpoints" / "round-000001").exists():
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        interrupted_at = time.monotonic()
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
    log = log_path.read_text()
    assert code == 130, log
    assert time.monotonic() - interrupted_at < 15  # stops promptly, not after the 50 rounds
    assert "interrupted: round " in log and "is the last completed and checkpointed round" in log
    assert "Traceback" not in log

    exp = Experiment.load_breakpoint(folder)
    done = exp.round_current()
    assert done >= 1
    assert {row["round"] for row in _rows(folder)} == set(range(1, done + 1))
    # An interrupted run has no final model; the checkpoint holds the last completed round's.
    assert not (folder / "final_params.npz").exists()
    assert "final global parameters written" not in log
    saved = exp.aggregated_params()[done]["params"]
    params = exp.training_plan().get_parameters()
    for name, value in params.items():
        np.testing.assert_array_equal(saved[name], value)
    assert exp.agg_optimizer().module_names == ["scaffold-server", "yogi"]
    assert exp.round_limit() == 50


def test_python_script_obeys_rounds_and_resumes_the_latest_experiment(
    tmp_path, start_node, researcher_address
):
    script = ROOT / "examples" / "fedyogi_scaffold" / "experiment.py"
    out = tmp_path / "runs"
    server = ("--address", researcher_address, "--insecure", "--out", str(out))
    _start_nodes(tmp_path, start_node, researcher_address)

    first = _run("run", str(script), *server, "--rounds", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    (folder,) = out.iterdir()
    assert {r["round"] for r in _rows(folder)} == {1}

    resumed = _run("run", str(script), *server, "--rounds", "2", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert list(out.iterdir()) == [folder]
    assert sorted(r["round"] for r in _rows(folder)) == [1, 1, 2, 2]
    state = read_checkpoint_state(list_checkpoints(folder)[-1])
    assert (state["round"], state["experiment_id"]) == (2, folder.name)
