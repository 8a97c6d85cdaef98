"""`fedloom simulate --ray-address`: a TOML experiment on a two-node Ray cluster on loopback.

The test starts the cluster itself (`ray start --head` and one `ray start --address` worker
node, one CPU each) as blocking processes in their own sessions, so stopping them ends
exactly the Ray processes this test started and no other Ray on the machine.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from common.training_plans.source import plan_source
from tests.conftest import ROOT, fedloom_cmd, free_port, stop_process_group, write_tabular_csv
from tests.plans.algorithms import SGDRegressionPlan

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).with_name("ray"))
#: Small but above Ray's 75 MB minimum: tasks pass file paths, not arrays.
OBJECT_STORE_BYTES = 80 * 1024 * 1024
#: Seconds for both Ray nodes to register with the head: ~35 s each on a loaded 2-core box.
CLUSTER_START_TIMEOUT = 300.0


def _cluster_env() -> dict[str, str]:
    """Ray's token authentication with a fresh token, shared by every process of the test."""
    return {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}


def _ray_node(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            RAY,
            "start",
            *args,
            "--num-cpus=1",
            f"--object-store-memory={OBJECT_STORE_BYTES}",
            "--disable-usage-stats",
            "--block",
        ],
        stdout=open(log, "ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=ROOT,
        env=env,
    )


def _alive_nodes(address: str, env: dict[str, str]) -> int:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import ray; ray.init(address={address!r}, logging_level='ERROR'); "
            "print(sum(n['Alive'] for n in ray.nodes()))",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
    )
    return int(done.stdout.strip() or 0) if done.returncode == 0 else 0


@dataclass(frozen=True)
class RayCluster:
    """Where the test cluster listens, and the environment (auth token) to reach it."""

    address: str
    env: dict[str, str]


@pytest.fixture
def ray_cluster(tmp_path: Path) -> Iterator[RayCluster]:
    """A head and one worker node on 127.0.0.1, one CPU each; stopped (only them) after."""
    env = _cluster_env()
    port = free_port()
    address = f"127.0.0.1:{port}"
    # Short: Ray's socket paths live under it and must fit in 107 characters.
    temp_dir = Path(tempfile.mkdtemp(prefix="fl-ray-"))
    head = _ray_node(
        [
            "--head",
            f"--port={port}",
            "--node-ip-address=127.0.0.1",
            "--include-dashboard=false",
            f"--temp-dir={temp_dir}",
        ],
        tmp_path / "ray-head.log",
        env,
    )
    processes = [head]
    try:
        time.sleep(3)
        processes.append(
            _ray_node(
                [f"--address={address}", "--node-ip-address=127.0.0.1"],
                tmp_path / "ray-worker.log",
                env,
            )
        )
        deadline = time.monotonic() + CLUSTER_START_TIMEOUT
        while _alive_nodes(address, env) < 2:
            assert time.monotonic() < deadline, (tmp_path / "ray-worker.log").read_text()
            time.sleep(2)
        yield RayCluster(address, env)
    finally:
        for proc in reversed(processes):
            stop_process_group(proc)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_simulate_runs_a_toml_experiment_across_a_two_node_ray_cluster(
    tmp_path: Path, ray_cluster: RayCluster
) -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(120, 4))
    data = write_tabular_csv(tmp_path / "data.csv", x, x @ np.array([1.0, -2.0, 0.5, 3.0]))
    (tmp_path / "plan.py").write_text(plan_source(SGDRegressionPlan), encoding="utf-8")
    experiment = tmp_path / "sim.toml"
    experiment.write_text(
        'name = "sim"\ntags = ["#reg"]\nrounds = 2\n'
        '[plan]\nfile = "plan.py"\nclass = "SGDRegressionPlan"\n'
        "[training_args]\nnum_updates = 2\nbatch_size = 1000\n",
        encoding="utf-8",
    )
    # Two actors of one CPU each on two one-CPU Ray nodes: one actor on each node.
    done = subprocess.run(
        fedloom_cmd(
            "simulate", str(experiment), "--nodes", "4", "--data", str(data),
            "--sample-count", "2", "--pool", "2", "--ray-address", ray_cluster.address,
            "--out", str(tmp_path / "runs"), "--json",
        ),
        capture_output=True, text=True, cwd=ROOT, env=ray_cluster.env, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["rounds"] == 2 and summary["nodes"] == 4
    metrics = tmp_path / "runs" / "sim" / "metrics.jsonl"
    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    per_round = [sum(1 for line in lines if line["round"] == r) for r in (1, 2)]
    assert per_round == [2, 2]  # --sample-count 2 of the 4 virtual nodes, each round
    assert (tmp_path / "runs" / "sim" / "final_params.npz").exists()
