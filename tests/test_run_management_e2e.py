"""Run management from another shell: `researcher ls | logs --follow | stop`, `run --format json`
and `--set`, against a real run with real nodes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from researcher.checkpoint import list_checkpoints
from tests.conftest import ROOT, fedloom_cmd
from tests.test_researcher_cli_e2e import RUN_TIMEOUT, _experiment_toml, _rows, _start_nodes

pytestmark = pytest.mark.slow

#: Rounds of the managed run: far more than it can run before the test stops it (a round
#: takes about a second, each CLI call several on a loaded 2-core box).
ROUNDS = 5000


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        fedloom_cmd("researcher", *args),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=RUN_TIMEOUT,
        env={**os.environ, "COLUMNS": "80"},
    )


def _popen(log_dir: Path, name: str, *args: str) -> subprocess.Popen[str]:
    """`fedloom researcher ARGS` in the background, its stdout and stderr in files (a pipe
    nobody reads would fill up and block a long run)."""
    return subprocess.Popen(
        fedloom_cmd("researcher", *args),
        stdout=open(log_dir / f"{name}.out", "w"),
        stderr=open(log_dir / f"{name}.err", "w"),
        text=True,
        cwd=ROOT,
    )


def _wait_for(path: Path, proc: subprocess.Popen[str], stderr: Path) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT
    while not path.exists():
        assert proc.poll() is None, stderr.read_text()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_ls_logs_and_stop_work_from_another_shell_while_a_run_goes(
    tmp_path, start_node, researcher_address
):
    toml = _experiment_toml(tmp_path, "managed", rounds=ROUNDS)
    out = tmp_path / "runs"
    run = _popen(
        tmp_path,
        "run",
        "run",
        str(toml),
        "--address",
        researcher_address,
        "--insecure",
        "--out",
        str(out),
        "--set",
        "training_args.num_updates=2",
        "--format",
        "json",
    )
    _start_nodes(tmp_path, start_node, researcher_address)
    folder = out / "managed"
    _wait_for(folder / "checkpoints" / "round-000001", run, tmp_path / "run.err")

    listing = _cli("ls", "--out", str(out), "--json")
    assert listing.returncode == 0, listing.stderr
    (entry,) = json.loads(listing.stdout)
    assert (entry["name"], entry["state"], entry["last_round"]) == ("managed", "running", ROUNDS)
    assert entry["rounds_done"] >= 1 and entry["last_loss"] > 0

    table = _cli("ls", "--out", str(out))
    assert table.returncode == 0
    assert "managed" in table.stdout and "running" in table.stdout and f"/{ROUNDS}" in table.stdout

    follower = _popen(tmp_path, "follow", "logs", "managed", "--follow", "--out", str(out))
    stop = _cli("stop", "managed", "--out", str(out), "--wait", "--timeout", "120")
    assert stop.returncode == 0, stop.stderr
    assert "stops after the current round's checkpoint" in stop.stdout
    assert "managed is stopped after round" in stop.stdout

    assert run.wait(timeout=RUN_TIMEOUT) == 0, (tmp_path / "run.err").read_text()[-3000:]
    stderr = (tmp_path / "run.err").read_text()
    summary = json.loads((tmp_path / "run.out").read_text())
    (result,) = summary["runs"]
    done = result["rounds_done"]
    assert summary["exit_code"] == 0 and result["state"] == "stopped" and done < ROUNDS
    assert [r["round"] for r in result["rounds"]] == list(range(1, done + 1))
    assert result["final_params"] == str(folder / "final_params.npz")
    assert list_checkpoints(folder)[-1].name == f"round-{done:06d}"
    assert all(row["n_steps"] == 2 for row in _rows(folder))  # --set reached the nodes
    assert "Traceback" not in stderr

    assert follower.wait(timeout=60) == 0  # --follow ends with the run
    followed = (tmp_path / "follow.out").read_text()
    assert f"round {done}/{ROUNDS} done" in followed
    assert f"stop requested: the run ends after round {done}'s checkpoint" in followed

    after = json.loads(_cli("ls", "--out", str(out), "--json").stdout)
    assert after[0]["state"] == "stopped" and after[0]["rounds_done"] == done
    again = _cli("stop", "managed", "--out", str(out))
    assert again.returncode == 2 and "is not running: it is stopped" in again.stderr


def test_set_overrides_are_validated_like_the_file(tmp_path: Path) -> None:
    toml = _experiment_toml(tmp_path, "checked", rounds=2)
    common = ("--insecure", "--out", str(tmp_path / "runs"), "--format", "json")
    bad_value = _cli("run", str(toml), *common, "--set", "strategy.min_nodes=many")
    assert bad_value.returncode == 2
    assert "min_nodes" in bad_value.stderr and str(toml) in bad_value.stderr
    assert json.loads(bad_value.stdout)["exit_code"] == 2

    unknown = _cli("run", str(toml), *common, "--set", "trainig_args.batch_size=64")
    assert unknown.returncode == 2 and "trainig_args" in unknown.stderr

    not_a_table = _cli("run", str(toml), *common, "--set", "rounds.max=3")
    assert not_a_table.returncode == 2
    assert "rounds is a int, not a table" in not_a_table.stderr

    malformed = _cli("run", str(toml), *common, "--set", "rounds")
    assert malformed.returncode == 2 and "expected KEY=VALUE" in malformed.stderr


def test_logs_of_an_unknown_run_lists_the_known_ones(tmp_path: Path) -> None:
    from researcher.run_control import RunControl

    control = RunControl(tmp_path / "runs" / "first")
    control.started("exp-1", 1, 3)
    control.round_done(1, 0.5)
    control.finished("interrupted")
    proc = _cli("logs", "nope", "--out", str(tmp_path / "runs"))
    assert proc.returncode == 2
    assert "no run 'nope'" in proc.stderr and "first" in proc.stderr
    listing = json.loads(_cli("ls", "--out", str(tmp_path / "runs"), "--json").stdout)
    assert [(r["name"], r["state"], r["rounds_done"]) for r in listing] == [
        ("first", "interrupted", 1)
    ]


def test_a_run_whose_process_is_gone_lists_as_died(tmp_path: Path) -> None:
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from researcher.run_control import RunControl; "
            "RunControl(sys.argv[1]).started('exp-2', 1, 5)",
            str(tmp_path / "runs" / "crashed"),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
    )
    assert child.returncode == 0, child.stderr
    listing = json.loads(_cli("ls", "--out", str(tmp_path / "runs"), "--json").stdout)
    assert listing[0]["state"] == "died"
    stop = _cli("stop", "crashed", "--out", str(tmp_path / "runs"))
    assert stop.returncode == 2 and "is gone" in stop.stderr and "--resume" in stop.stderr
