"""The container deployment: docker/entrypoint.sh's roles, and docker-compose.yml for real.

The entrypoint tests run the script on this host against a stand-in `fedloom` that
records its calls (fast). The compose test (marked `compose`: minutes, root) runs only
when selected, `pytest -m compose tests/test_compose.py` (or FEDLOOM_RUN_COMPOSE=1): it
prepares the host with tools/podman-host-setup.sh (idempotent), builds the image with
the CPU torch wheel mounted, runs the stack under its own project name and removes its
containers and volumes at the end.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SETUP_SCRIPT = REPO / "tools" / "podman-host-setup.sh"
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"
WHEELS_DIR = Path(os.environ.get("FEDLOOM_WHEELS_DIR", "/var/cache/fedloom/wheels"))
IMAGE = "localhost/fedloom:compose-test"
NODES = {"node-1", "node-2", "node-3"}
ROUNDS = 3

#: Budgets in seconds, inside the 15 minutes the whole test may take: host setup is ~1 min
#: on a new machine, a cold image build ~3 min (seconds when cached), the federation
#: itself well under a minute per round on 2 cores.
SETUP_TIMEOUT = 300
BUILD_TIMEOUT = 420
CERTS_TIMEOUT = 120
RUN_TIMEOUT = 420
DOWN_TIMEOUT = 120


def _selected(config: pytest.Config) -> bool:
    markexpr = str(config.getoption("-m") or "")
    wanted = "compose" in markexpr and "not compose" not in markexpr
    return wanted or os.environ.get("FEDLOOM_RUN_COMPOSE") == "1"


def _run(cmd: list[str], log: Path, timeout: float, env: dict[str, str]) -> int:
    """Run ``cmd`` from the repo root, appending its output to ``log``; returns the exit code."""
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.run(
            cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout
        )
    return proc.returncode


def _tail(log: Path, lines: int = 60) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture
def compose_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """A prepared host and built image; yields the environment for podman-compose."""
    if not _selected(request.config):
        pytest.skip("builds images and runs containers: select it with -m compose")
    if os.geteuid() != 0:
        pytest.skip("podman host setup needs root")
    log = tmp_path / "setup.log"
    env = {**os.environ, "FEDLOOM_WHEELS_DIR": str(WHEELS_DIR)}
    logging.getLogger(__name__).info("compose: preparing the podman host (log: %s)", log)
    code = _run(["bash", str(SETUP_SCRIPT)], log, SETUP_TIMEOUT, env)
    assert code == 0, f"host setup failed:\n{_tail(log)}"
    assert shutil.which("podman-compose"), "host setup did not install podman-compose"
    build = [
        "podman", "build", "--format", "docker",
        "-v", f"{WHEELS_DIR}:/wheels:ro",
        "-f", "docker/Dockerfile", "-t", IMAGE, ".",
    ]  # fmt: skip
    logging.getLogger(__name__).info("compose: building the image (a cold build takes ~3 min)")
    code = _run(build, log, BUILD_TIMEOUT, env)
    assert code == 0, f"image build failed:\n{_tail(log)}"
    yield {**env, "FEDLOOM_IMAGE": IMAGE}


def _volume_path(project: str, volume: str, env: dict[str, str]) -> Path:
    out = subprocess.run(
        ["podman", "volume", "inspect", f"{project}_{volume}", "--format", "{{.Mountpoint}}"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(out.stdout.strip())


def _losses_by_round(metrics: Path) -> dict[int, dict[str, float]]:
    """{round: {node: training loss}} from the researcher's metrics.jsonl."""
    rounds: dict[int, dict[str, float]] = defaultdict(dict)
    for line in metrics.read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if row.get("loss") is not None:
            rounds[int(row["round"])][str(row["node"])] = float(row["loss"])
    return dict(rounds)


@pytest.mark.compose
def test_compose_federation_trains_over_mtls_with_three_nodes(
    compose_env: dict[str, str], tmp_path: Path
) -> None:
    project = f"fedloom-test-{uuid.uuid4().hex[:8]}"
    env = {**compose_env, "FEDLOOM_ROUNDS": str(ROUNDS)}
    compose = ["podman-compose", "-p", project, "-f", "docker-compose.yml"]
    log = tmp_path / "compose.log"
    started = time.monotonic()
    try:
        # `certs` is one-shot: alone first, or --abort-on-container-exit would stop on it.
        code = _run(
            [*compose, "up", "--abort-on-container-exit", "--exit-code-from", "certs", "certs"],
            log,
            CERTS_TIMEOUT,
            env,
        )
        assert code == 0, f"certs service failed:\n{_tail(log)}"
        up = [
            *compose, "up", "--no-deps", "--abort-on-container-exit",
            "--exit-code-from", "researcher", "researcher", *sorted(NODES),
        ]  # fmt: skip
        logging.getLogger(__name__).info("compose: certificates issued; running the federation")
        code = _run(up, log, RUN_TIMEOUT, env)
        assert code == 0, f"researcher exited with {code}:\n{_tail(log)}"

        assert "--certs /certs" in log.read_text(), "the researcher did not serve over TLS"
        results = _volume_path(project, "results", env)
        runs = sorted(results.glob("*/metrics.jsonl"), key=lambda p: p.stat().st_mtime)
        assert runs, f"no metrics.jsonl in the results volume:\n{_tail(log)}"
        losses = _losses_by_round(runs[-1])
        assert sorted(losses) == list(range(1, ROUNDS + 1)), losses
        for rnd, by_node in losses.items():
            assert set(by_node) == NODES, f"round {rnd} answered by {sorted(by_node)}"
        first = sum(losses[1].values()) / len(NODES)
        last = sum(losses[ROUNDS].values()) / len(NODES)
        assert last < first, f"mean loss went from {first:.4f} (round 1) to {last:.4f}"
    finally:
        _run([*compose, "down", "-v"], log, DOWN_TIMEOUT, env)
        elapsed = time.monotonic() - started
        print(f"compose run took {elapsed:.0f} s; log: {log}")


# ---------------------------------------------------------------- entrypoint

#: A stand-in for the `fedloom` command: records each call, creates a node home on
#: `init`, and knows the datasets `dataset add` registered (for `dataset show`).
FAKE_FEDLOOM = r"""#!/bin/sh
printf '%s\n' "$*" >> "$FAKE_LOG"
home=""
[ "$1" = node ] && [ "$2" = --home ] && home="$3"
case "$*" in
  *" init "*|*" init") mkdir -p "$home" && touch "$home/config.toml" ;;
  *" dataset show "*) grep -qx "$6" "$home/datasets" 2>/dev/null ;;
  *" dataset add "*) printf '%s\n' "$7" >> "$home/datasets" ;;
esac
"""

#: Stands in for `python3 -m fedloom.demo_data OUT ...`: writes OUT.
FAKE_PYTHON = r"""#!/bin/sh
printf 'python3 %s\n' "$*" >> "$FAKE_LOG"
mkdir -p "$(dirname "$3")" && echo "x0,y" > "$3"
"""


def _entrypoint(tmp_path: Path, *args: str, **env: str) -> tuple[int, list[str], str]:
    """Run docker/entrypoint.sh with stand-ins; returns (exit code, fedloom calls, stderr)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in (("fedloom", FAKE_FEDLOOM), ("python3", FAKE_PYTHON)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "calls.log"
    full_env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "FAKE_LOG": str(log),
        "FEDLOOM_CERT_DIR": str(tmp_path / "certs"),
        "FEDLOOM_NODE_HOME": str(tmp_path / "data" / "node"),
        **env,
    }
    proc = subprocess.run(
        ["sh", str(ENTRYPOINT), *args], env=full_env, capture_output=True, text=True, timeout=30
    )
    calls = log.read_text().splitlines() if log.exists() else []
    return proc.returncode, calls, proc.stderr


def _node_certs(tmp_path: Path) -> Path:
    certs = tmp_path / "certs"
    certs.mkdir()
    for name in ("ca.pem", "node.pem", "node.key"):
        (certs / name).write_text("pem")
    return certs


def test_node_first_start_inits_registers_demo_data_and_starts_with_tls(tmp_path: Path) -> None:
    certs = _node_certs(tmp_path)
    home = tmp_path / "data" / "node"
    demo = tmp_path / "data" / "demo.csv"
    code, calls, err = _entrypoint(
        tmp_path, "node", FEDLOOM_RESEARCHER="researcher:50051", NODE_NAME="node-1",
        FEDLOOM_DEMO_DATASET="1", FEDLOOM_DEMO_CSV=str(demo), FEDLOOM_DEMO_NODE_INDEX="2",
    )  # fmt: skip
    assert code == 0, err
    assert calls[0] == f"node --home {home} init --name node-1 --cert {certs / 'node.pem'}"
    assert calls[1].startswith(f"python3 -m fedloom.demo_data {demo} --node-index 2")
    assert (
        f"node --home {home} dataset add --name demo --tags #demo --path {demo} --type csv --target y"
        in calls
    )
    assert calls[-1] == (
        f"node --home {home} start --researcher researcher:50051 --ca {certs}/ca.pem "
        f"--cert {certs}/node.pem --key {certs}/node.key"
    )


def test_node_restart_keeps_its_home_and_registers_only_new_datasets(tmp_path: Path) -> None:
    _node_certs(tmp_path)
    data = tmp_path / "data"
    env = {
        "FEDLOOM_RESEARCHER": "researcher:50051",
        "FEDLOOM_DATASETS": f"a|#x,#y|{data}/a.csv|csv|label; b|#z|{data}/b.npz",
    }
    code, first, err = _entrypoint(tmp_path, "node", **env)
    assert code == 0, err
    manifest = tmp_path / "datasets.txt"
    manifest.write_text(f"# extra data\nc|#w|{data}/c.csv  # added later\n")
    code, calls, err = _entrypoint(tmp_path, "node", FEDLOOM_DATASET_MANIFEST=str(manifest), **env)
    assert code == 0, err
    second = calls[len(first) :]
    assert not any(" init " in c for c in second)
    assert [c for c in second if " dataset add " in c] == [
        f"node --home {data}/node dataset add --name c --tags #w --path {data}/c.csv"
    ]
    added = [c.split("--name ")[1].split()[0] for c in calls if " dataset add " in c]
    assert added == ["a", "b", "c"]
    assert any("--tags #x,#y" in c and "--target label" in c for c in calls)


def test_node_without_certificates_refuses_to_start_unless_insecure(tmp_path: Path) -> None:
    code, calls, err = _entrypoint(tmp_path, "node", FEDLOOM_RESEARCHER="researcher:50051")
    assert code == 2
    assert "node.pem" in err and "FEDLOOM_INSECURE=1" in err
    assert not any(" start " in c for c in calls)
    code, calls, err = _entrypoint(
        tmp_path, "node", FEDLOOM_RESEARCHER="researcher:50051", FEDLOOM_INSECURE="1"
    )
    assert code == 0, err
    assert calls[-1].endswith("start --researcher researcher:50051 --insecure")
    assert "WITHOUT TLS" in err


def test_researcher_serves_with_the_mounted_certificates(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "researcher.pem").write_text("pem")
    experiment = tmp_path / "experiment.py"
    experiment.write_text("")
    code, calls, err = _entrypoint(tmp_path, "researcher", str(experiment), "--rounds", "2")
    assert code == 0, err
    assert calls == [
        f"researcher run {experiment} --address 0.0.0.0:50051 --out /results --rounds 2 "
        f"--certs {certs}"
    ]


def test_researcher_without_experiment_names_the_fix(tmp_path: Path) -> None:
    code, _, err = _entrypoint(tmp_path, "researcher")
    assert code == 2
    assert "FEDLOOM_EXPERIMENT" in err


@pytest.mark.skipif(os.geteuid() != 0, reason="the certs role hands folders over with chown")
def test_certs_role_gives_each_mounted_folder_only_its_own_files(tmp_path: Path) -> None:
    fedloom = Path(shutil.which("fedloom") or "")
    if not fedloom.is_file():
        pytest.skip("the fedloom command is not installed in this environment")
    export = tmp_path / "export"
    for name in ("researcher", "node-1", "node-7"):
        (export / name).mkdir(parents=True)
    env = {
        "PATH": f"{fedloom.parent}:/usr/bin:/bin",
        "FEDLOOM_PKI_DIR": str(tmp_path / "pki"),
        "FEDLOOM_CERT_EXPORT": str(export),
        "FEDLOOM_USER": "root",
        "FEDLOOM_ALLOWED_NODES": "node-1,node-7",
    }
    for _ in range(2):  # the second run reuses the CA and changes nothing
        # A generous bound: each run starts several Python processes, slow on a loaded CI host.
        proc = subprocess.run(
            ["sh", str(ENTRYPOINT), "certs"], env=env, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stderr
    files = {p.name: sorted(f.name for f in p.iterdir()) for p in export.iterdir()}
    assert files == {
        "researcher": ["allowed_nodes.txt", "ca.pem", "researcher.key", "researcher.pem"],
        "node-1": ["ca.pem", "node.key", "node.pem"],
        "node-7": ["ca.pem", "node.key", "node.pem"],
    }
    assert (export / "researcher" / "allowed_nodes.txt").read_text().split() == ["node-1", "node-7"]
    assert ((export / "node-7" / "node.key").stat().st_mode & 0o777) == 0o600
    assert "CA present" in proc.stderr
