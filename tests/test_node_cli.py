"""`fedloom node ...`: the operator's commands (node.cli) and the node home (node.home)."""

from __future__ import annotations

import getpass
import json
import logging
import os
import re
import sqlite3
import subprocess
import sys
import tomllib
import types
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from common.errors import NodeHomeError
from node.cli import main
from node.home import NodeHome
from node.plans import PlanRegistry, plan_hash

REPO = Path(__file__).resolve().parents[1]

PLAN = """\
class HeartPlan(TorchTrainingPlan):
    def training_step(self, data, target):
        return self.model()(data)[0]
"""


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rich wraps tables to $COLUMNS (80 when not a terminal): widen so cells stay whole."""
    monkeypatch.setenv("COLUMNS", "200")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def home(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    path = tmp_path / "home"
    assert run(capsys, "node", "--home", str(path), "init", "--name", "ward-3")[0] == 0
    return path


@pytest.fixture
def csv_file(tmp_path: Path) -> Path:
    path = tmp_path / "heart.csv"
    pd.DataFrame({"age": [50, 61, 47], "bp": [120, 135, 128], "y": [0, 1, 0]}).to_csv(
        path, index=False
    )
    return path


def node(home: Path, *argv: str) -> list[str]:
    return ["node", "--home", str(home), *argv]


def rows(home: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(home / "node.db") as conn:
        return conn.execute(sql).fetchall()


def add_heart(capsys: pytest.CaptureFixture[str], home: Path, csv_file: Path) -> None:
    argv = node(home, "dataset", "add", "--name", "heart", "--tags", "#heart, #csv")
    code, _, err = run(capsys, *argv, "--path", str(csv_file), "--target", "y")
    assert code == 0, err


def request_plan(home: Path, source: str = PLAN) -> str:
    record = PlanRegistry(home / "node.db").record_request(
        plan_hash(source), "HeartPlan", source, "researcher-1"
    )
    return record.plan_id


# ----------------------------------------------------------------------- init


def test_init_creates_config_keys_database_logs_and_state(home: Path) -> None:
    with open(home / "config.toml", "rb") as fh:
        config = tomllib.load(fh)
    assert re.fullmatch(r"node-[0-9a-f]{12}", config["node"]["id"])
    assert config["node"]["name"] == "ward-3"
    assert config["node"]["created_at"].endswith("Z")
    assert config["researcher"]["address"] == "localhost:50051"
    assert any((home / "keys").iterdir())
    assert (home / "logs").is_dir() and (home / "state").is_dir()
    assert rows(home, "PRAGMA journal_mode") == [("wal",)]
    assert [p.name for p in home.parent.iterdir() if p.name.startswith(".")] == []


def test_second_init_is_refused_and_keeps_the_node_id(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = (home / "config.toml").read_bytes()
    keys_before = {p.name: p.read_bytes() for p in (home / "keys").iterdir()}
    code, _, err = run(capsys, *node(home, "init"))
    assert code == 2
    assert err.startswith("error: ") and "already a fedloom node home" in err
    assert err.count("\n") == 1
    assert (home / "config.toml").read_bytes() == before
    assert {p.name: p.read_bytes() for p in (home / "keys").iterdir()} == keys_before


def test_init_refuses_a_non_empty_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "patients.csv").write_text("x\n1\n")
    code, _, err = run(capsys, "node", "--home", str(tmp_path / "data"), "init")
    assert code == 2 and "not an empty directory" in err
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["patients.csv"]


def test_init_accepts_an_existing_empty_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    assert run(capsys, "node", "--home", str(tmp_path / "empty"), "init")[0] == 0
    assert NodeHome.open(tmp_path / "empty").name.startswith("node-")


def test_a_failed_init_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import common.secagg.keys

    def broken(directory: Path) -> None:
        raise NodeHomeError(f"cannot write a key in {directory}")

    monkeypatch.setattr(common.secagg.keys, "load_or_create_keypair", broken)
    code, _, err = run(capsys, "node", "--home", str(tmp_path / "h"), "init")
    assert code == 2 and "cannot write a key" in err
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    assert run(capsys, "node", "--home", str(tmp_path / "h"), "init")[0] == 0


def test_home_comes_from_the_environment_then_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FEDLOOM_NODE_HOME", str(tmp_path / "from-env"))
    assert run(capsys, "node", "init")[0] == 0
    assert (tmp_path / "from-env" / "config.toml").is_file()
    monkeypatch.delenv("FEDLOOM_NODE_HOME")
    assert run(capsys, "node", "init")[0] == 0
    assert (tmp_path / "fedloom-node" / "config.toml").is_file()


def test_node_home_properties(home: Path) -> None:
    loaded = NodeHome.open(home)
    assert loaded.name == "ward-3" and loaded.node_id.startswith("node-")
    assert loaded.db_path == home / "node.db"
    assert (loaded.keys_dir, loaded.logs_dir, loaded.state_dir) == (
        home / "keys",
        home / "logs",
        home / "state",
    )
    assert loaded.researcher_address == "localhost:50051"
    assert loaded.config["node"]["id"] == loaded.node_id


@pytest.mark.parametrize("damage", ["missing", "no-database", "bad-config"])
def test_opening_a_missing_or_damaged_home_is_refused(home: Path, damage: str) -> None:
    target = home
    if damage == "missing":
        target = home.parent / "elsewhere"
        expected = r"no fedloom node home at .*elsewhere.*init"
    elif damage == "no-database":
        (home / "node.db").unlink()
        expected = "has no database"
    else:
        (home / "config.toml").write_text("[node\n")
        expected = "cannot be read"
    with pytest.raises(NodeHomeError, match=expected):
        NodeHome.open(target)


@pytest.mark.parametrize(
    "argv",
    [
        ("dataset", "list"),
        ("dataset", "show", "heart"),
        ("dataset", "remove", "heart"),
        ("plan", "list"),
        ("plan", "approve", "abcdef123456"),
        ("start", "--insecure"),
    ],
)
def test_commands_on_a_missing_home_name_the_init_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]
) -> None:
    code, out, err = run(capsys, *node(tmp_path / "nope", *argv))
    assert code == 2 and out == ""
    assert err == (
        f"error: no fedloom node home at {tmp_path / 'nope'}: create it with "
        f"`fedloom node --home {tmp_path / 'nope'} init`\n"
    )
    assert not (tmp_path / "nope").exists()


def test_a_corrupted_database_is_one_error_line_not_a_traceback(home: Path) -> None:
    (home / "node.db").write_bytes(b"this is not sqlite" * 100)
    for suffix in ("-wal", "-shm"):
        (home / f"node.db{suffix}").unlink(missing_ok=True)
    result = subprocess.run(
        [sys.executable, "-m", "node.cli", *node(home, "dataset", "list")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: node database") and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1


# ------------------------------------------------------------------- datasets


def test_dataset_add_list_show_round_trip(
    home: Path, csv_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    add_heart(capsys, home, csv_file)
    code, out, _ = run(capsys, *node(home, "dataset", "list"))
    assert code == 0 and "heart" in out and "#heart, #csv" in out and "3x3" in out
    code, out, _ = run(capsys, *node(home, "dataset", "list", "--json"))
    [listed] = json.loads(out)
    assert listed["tags"] == ["#heart", "#csv"] and listed["n_samples"] == 3
    assert listed["columns"] == ["age", "bp", "y"] and listed["target"] == "y"
    assert listed["path"] == str(csv_file.resolve())
    code, out, _ = run(capsys, *node(home, "dataset", "show", "heart", "--json"))
    shown = json.loads(out)
    assert shown == {**listed, "path_exists": True}
    code, out, _ = run(capsys, *node(home, "dataset", "show", "heart"))
    assert code == 0 and listed["sha256"] in out and "age, bp, y" in out


def test_dataset_add_json_prints_the_record(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    np.savez(tmp_path / "d.npz", X=np.zeros((6, 2)), y=np.zeros(6))
    argv = node(home, "dataset", "add", "--name", "z", "--tags", "#z", "--json")
    code, out, _ = run(capsys, *argv, "--path", str(tmp_path / "d.npz"), "--target", "y")
    assert code == 0
    assert json.loads(out)["shape"] == [6, 2]
    assert rows(home, "SELECT name, data_type, n_samples FROM datasets") == [("z", "npz", 6)]


def test_empty_dataset_list_says_how_to_add_one(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, *node(home, "dataset", "list"))
    assert code == 0 and "dataset add" in out
    assert json.loads(run(capsys, *node(home, "dataset", "list", "--json"))[1]) == []


def test_dataset_add_with_a_wrong_path_names_it_and_writes_nothing(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "typo.csv"
    code, out, err = run(
        capsys, *node(home, "dataset", "add", "--name", "a", "--tags", "#a", "--path", str(missing))
    )
    assert code == 2 and out == ""
    assert err.startswith(f"error: dataset path {missing} does not exist")
    assert rows(home, "SELECT COUNT(*) FROM datasets") == [(0,)]


def test_dataset_add_with_an_unknown_type_is_refused(
    home: Path, csv_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = node(home, "dataset", "add", "--name", "a", "--tags", "#a", "--path", str(csv_file))
    code, _, err = run(capsys, *argv, "--type", "parquet")
    assert code == 2 and "invalid choice: 'parquet'" in err
    code, _, err = run(capsys, *argv, "--type", "npz")
    assert code == 2 and "extension of a csv file but --type npz" in err
    assert rows(home, "SELECT COUNT(*) FROM datasets") == [(0,)]


def test_dataset_add_with_a_missing_target_lists_the_columns(
    home: Path, csv_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = node(home, "dataset", "add", "--name", "a", "--tags", "#a", "--path", str(csv_file))
    code, _, err = run(capsys, *argv, "--target", "label")
    assert code == 2
    assert err == (
        f"error: target column 'label' not found in {csv_file}; its columns are: age, bp, y\n"
    )
    for table in ("datasets", "dataset_tags", "dataset_files"):
        assert rows(home, f"SELECT COUNT(*) FROM {table}") == [(0,)]


def test_dataset_add_with_a_taken_name_keeps_the_first(
    home: Path, csv_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    add_heart(capsys, home, csv_file)
    other = tmp_path / "other.npy"
    np.save(other, np.zeros((2, 2)))
    argv = node(home, "dataset", "add", "--name", "heart", "--tags", "#x", "--path", str(other))
    code, _, err = run(capsys, *argv)
    assert code == 2 and "already registered" in err and "dataset remove heart" in err
    assert rows(home, "SELECT name, data_type FROM datasets") == [("heart", "csv")]
    assert rows(home, "SELECT tag FROM dataset_tags ORDER BY position") == [("#heart",), ("#csv",)]


def test_dataset_add_notes_datasets_a_query_could_confuse(
    home: Path, csv_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    add_heart(capsys, home, csv_file)
    argv = node(home, "dataset", "add", "--name", "heart2", "--tags", "#heart")
    code, out, _ = run(capsys, *argv, "--path", str(csv_file))
    assert code == 0 and "may also match heart" in out


@pytest.mark.parametrize("action", ["show", "remove", "verify"])
def test_unknown_dataset_is_refused(
    home: Path, capsys: pytest.CaptureFixture[str], action: str
) -> None:
    code, _, err = run(capsys, *node(home, "dataset", action, "ghost"))
    assert code == 2
    assert err == (
        "error: no dataset named 'ghost' on this node: `fedloom node dataset list` shows the "
        "registered ones\n"
    )


def test_dataset_remove_deletes_rows_but_not_the_file(
    home: Path, csv_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    add_heart(capsys, home, csv_file)
    code, out, _ = run(capsys, *node(home, "dataset", "remove", "heart"))
    assert code == 0 and "left untouched" in out
    assert csv_file.exists()
    for table in ("datasets", "dataset_tags", "dataset_files"):
        assert rows(home, f"SELECT COUNT(*) FROM {table}") == [(0,)]


def test_dataset_verify_reports_a_changed_file(
    home: Path, csv_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    add_heart(capsys, home, csv_file)
    code, out, _ = run(capsys, *node(home, "dataset", "verify"))
    assert code == 0 and "heart: unchanged" in out
    with open(csv_file, "a", encoding="utf-8") as fh:
        fh.write("70,140,1\n")
    code, out, _ = run(capsys, *node(home, "dataset", "verify", "heart", "--json"))
    assert code == 1
    [result] = json.loads(out)
    assert result["ok"] is False and str(csv_file.resolve()) in result["problems"][0]
    code, out, _ = run(capsys, *node(home, "dataset", "verify", "heart"))
    assert code == 1 and "heart: CHANGED" in out


def test_dataset_show_flags_a_missing_file(
    home: Path, csv_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    add_heart(capsys, home, csv_file)
    csv_file.unlink()
    assert (
        json.loads(run(capsys, *node(home, "dataset", "show", "heart", "--json"))[1])["path_exists"]
        is False
    )
    assert "(MISSING)" in run(capsys, *node(home, "dataset", "show", "heart"))[1]


# ---------------------------------------------------------------------- plans


def test_plan_list_shows_pending_plans(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "No training plan" in run(capsys, *node(home, "plan", "list"))[1]
    plan_id = request_plan(home)
    code, out, _ = run(capsys, *node(home, "plan", "list"))
    assert code == 0 and plan_id in out and "HeartPlan" in out and "pending" in out
    [listed] = json.loads(run(capsys, *node(home, "plan", "list", "--json"))[1])
    assert listed["id"] == plan_id and listed["status"] == "pending"
    assert "source" not in listed
    assert (
        json.loads(run(capsys, *node(home, "plan", "list", "--status", "approved", "--json"))[1])
        == []
    )


def test_plan_show_prints_the_source_verbatim(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = PLAN + "    # [bold]not rich markup[/bold]\n"
    plan_id = request_plan(home, source)
    code, out, _ = run(capsys, *node(home, "plan", "show", plan_id))
    assert code == 0
    assert out.endswith(source)
    assert f"plan {plan_id}" in out and "researcher-1" in out
    assert (
        json.loads(run(capsys, *node(home, "plan", "show", plan_id, "--json"))[1])["source"]
        == source
    )


def test_plan_approve_then_reject_is_stored(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan_id = request_plan(home)
    code, out, _ = run(capsys, *node(home, "plan", "approve", plan_id))
    assert code == 0 and f"Plan {plan_id} (HeartPlan) is now approved." in out
    assert rows(home, "SELECT status FROM plans") == [("approved",)]
    code, out, _ = run(capsys, *node(home, "plan", "reject", plan_id[:8]))
    assert code == 0 and "now rejected" in out
    [(status, decided_at)] = rows(home, "SELECT status, decided_at FROM plans")
    assert status == "rejected" and decided_at.endswith("Z")


@pytest.mark.parametrize("action", ["show", "approve", "reject"])
def test_unknown_plan_id_is_refused_and_changes_nothing(
    home: Path, capsys: pytest.CaptureFixture[str], action: str
) -> None:
    request_plan(home)
    code, _, err = run(capsys, *node(home, "plan", action, "0000000000ff"))
    assert code == 2
    assert err.startswith("error: no training plan with id 0000000000ff")
    assert rows(home, "SELECT status, decided_at FROM plans") == [("pending", None)]


def test_malformed_plan_id_is_refused(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, *node(home, "plan", "approve", "abc"))
    assert code == 2 and "is not a plan id" in err


# ---------------------------------------------------------------------- start


@pytest.fixture
def fake_daemon(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Replace node.daemon with a recorder: these tests check what start passes, not the daemon."""
    calls: list[dict[str, Any]] = []

    def run_node(home: NodeHome, researcher: str, **kwargs: Any) -> int:
        calls.append({"home": home, "researcher": researcher, **kwargs})
        return 0

    monkeypatch.setitem(sys.modules, "node.daemon", types.SimpleNamespace(run_node=run_node))
    return calls


def test_start_passes_config_defaults_to_the_daemon(
    home: Path, fake_daemon: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, *node(home, "start", "--insecure"))[0] == 0
    [call] = fake_daemon
    assert call["home"].path == home and call["researcher"] == "localhost:50051"
    assert call["insecure"] is True and call["tls"] is None
    assert call["allow_unapproved"] is False
    assert call["task_timeout"] is None and call["max_memory_mb"] is None


def test_start_passes_tls_files_and_limits(
    home: Path,
    tmp_path: Path,
    fake_daemon: list[dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    from common.tls import init_certs

    node_id = NodeHome.open(home).node_id
    paths = init_certs(tmp_path / "pki", ["localhost"], [node_id]).node(node_id)
    argv = ["--researcher", "research.example:7000", "--ca", str(paths.ca)]
    argv += ["--cert", str(paths.cert), "--key", str(paths.key)]
    argv += ["--task-timeout", "90", "--max-memory-mb", "2048"]
    assert run(capsys, *node(home, "start", *argv))[0] == 0
    [call] = fake_daemon
    assert call["researcher"] == "research.example:7000" and call["insecure"] is False
    assert call["tls"] == {"ca": str(paths.ca), "cert": str(paths.cert), "key": str(paths.key)}
    assert (call["task_timeout"], call["max_memory_mb"]) == (90.0, 2048)


def test_start_refuses_a_certificate_issued_to_another_node(
    home: Path,
    tmp_path: Path,
    fake_daemon: list[dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    from common.tls import init_certs

    paths = init_certs(tmp_path / "pki", ["localhost"], ["node-other"]).node("node-other")
    argv = ["--ca", str(paths.ca), "--cert", str(paths.cert), "--key", str(paths.key)]
    code, _, err = run(capsys, *node(home, "start", *argv))
    assert code == 2 and not fake_daemon
    assert "issued to node 'node-other'" in err and "--node-id node-other" in err


def test_init_with_cert_takes_the_node_id_from_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from common.tls import init_certs

    paths = init_certs(tmp_path / "pki", ["localhost"], ["node-3"]).node("node-3")
    code, _, _ = run(capsys, *node(tmp_path / "h", "init", "--cert", str(paths.cert)))
    assert code == 0 and NodeHome.open(tmp_path / "h").node_id == "node-3"


def test_init_with_node_id_uses_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, _ = run(capsys, *node(tmp_path / "h", "init", "--node-id", "node-7"))
    assert code == 0 and NodeHome.open(tmp_path / "h").node_id == "node-7"


def test_start_with_allow_unapproved_logs_a_warning(
    home: Path,
    fake_daemon: list[dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="node.cli"):
        assert run(capsys, *node(home, "start", "--insecure", "--allow-unapproved"))[0] == 0
    assert fake_daemon[0]["allow_unapproved"] is True
    assert any(
        r.levelno == logging.WARNING and "ANY training plan" in r.getMessage()
        for r in caplog.records
    )


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        (["--insecure", "--ca", "{ca}"], "--insecure turns TLS off"),
        (["--cert", "{ca}"], "--cert and --key go together"),
        (["--ca", "{missing}"], "does not exist"),
        (["--insecure", "--task-timeout", "0"], "--task-timeout must be a positive number"),
        (
            ["--insecure", "--max-memory-mb", "-5"],
            "--max-memory-mb must be a number of megabytes, or 0 for no limit",
        ),
    ],
)
def test_start_refuses_inconsistent_options_before_starting(
    home: Path,
    tmp_path: Path,
    fake_daemon: list[dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    reason: str,
) -> None:
    (tmp_path / "ca.pem").write_text("PEM")
    values = {"ca": str(tmp_path / "ca.pem"), "missing": str(tmp_path / "missing.pem")}
    code, _, err = run(capsys, *node(home, "start", *[a.format(**values) for a in extra]))
    assert code == 2 and reason in err and err.startswith("error: ")
    assert fake_daemon == []


def test_node_without_a_sub_command_prints_usage(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "node")
    assert code == 2 and "usage:" in err


# ------------------------------------------------------------------ audit


def test_cli_actions_are_in_the_audit_trail_with_the_user_and_the_reason(
    home: Path, csv_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from node.audit import AuditTrail

    add_heart(capsys, home, csv_file)
    plan_id = request_plan(home)
    code, out, err = run(capsys, *node(home, "plan", "reject", plan_id, "--reason", "uses Adam"))
    assert code == 0, err
    code, out, _ = run(capsys, *node(home, "plan", "show", plan_id))
    assert "reason: uses Adam" in out
    assert run(capsys, *node(home, "dataset", "remove", "heart"))[0] == 0

    entries = AuditTrail(home / "node.db").list()
    assert [(e.source, e.action, e.subject) for e in reversed(entries)] == [
        ("cli", "dataset.add", "heart"),
        ("cli", "plan.reject", plan_id),
        ("cli", "dataset.remove", "heart"),
    ]
    assert {e.actor for e in entries} == {getpass.getuser()}
    assert "reason: uses Adam" in entries[1].detail


def test_init_shows_the_console_password_once_and_stores_only_its_hash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from node.console_password import check_password

    path = tmp_path / "fresh"
    code, out, _ = run(capsys, "node", "--home", str(path), "init")
    assert code == 0
    secret = re.search(r"web console password: (\S+)", out)
    assert secret, out
    assert check_password(path / "node.db", secret.group(1))
    assert not check_password(path / "node.db", secret.group(1) + "x")
    assert secret.group(1).encode() not in (path / "node.db").read_bytes()


# ------------------------------------------------------------------ containment


def test_containment_reports_what_the_kernel_confines(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from node.containment import probe_support

    support = probe_support()
    code, out, _ = run(capsys, *node(home, "containment", "--json"))
    report = json.loads(out)
    assert report["landlock_abi"] == support.landlock_abi
    assert report["writes_confined"] == support.confines_writes
    assert report["network_isolated"] == support.isolates_network
    assert code == (0 if not report["problems"] else 1)


def test_containment_off_in_the_config_is_reported_as_a_problem(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with (home / "config.toml").open("a", encoding="utf-8") as fh:
        fh.write('\n[containment]\nconfinement = "off"\nmax_memory_mb = 0\n')
    code, out, _ = run(capsys, *node(home, "containment", "--json"))
    report = json.loads(out)
    assert code == 1
    assert not report["writes_confined"] and not report["network_isolated"]
    assert report["max_memory_mb"] == 0
    assert any("NO memory limit" in p for p in report["problems"])
    assert any("confinement = 'off'" in p for p in report["problems"])


def test_start_accepts_zero_memory_for_no_limit_and_refuses_a_negative_one(
    home: Path, fake_daemon: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--insecure", "--max-memory-mb", "0", "--confinement", "require"]
    assert run(capsys, *node(home, "start", *argv))[0] == 0
    assert (fake_daemon[0]["max_memory_mb"], fake_daemon[0]["confinement"]) == (0, "require")
    code, _, err = run(capsys, *node(home, "start", "--insecure", "--max-memory-mb", "-1"))
    assert code == 2 and "0 for no limit" in err
