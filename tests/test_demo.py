"""`fedloom demo`: the node datasets come from `data split` and the federation runs to the end."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import ROOT, fedloom_cmd


@pytest.mark.slow
def test_demo_splits_one_pool_into_node_datasets_and_completes(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    done = subprocess.run(
        fedloom_cmd("demo", "--nodes", "2", "--rounds", "1", "--split", "label-skew:1",
                    "--workdir", str(work)),
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "pool.csv -> 2 nodes, label-skew:1, seed 0" in done.stdout
    pool = pd.read_csv(work / "data" / "pool.csv")
    parts = [pd.read_csv(work / "data" / f"node-{i}.csv") for i in (1, 2)]
    assert sorted(len(p["y"].unique()) for p in parts) == [1, 1]
    assert sum(len(p) for p in parts) == len(pool)
    assert "final model:" in done.stdout
    assert list((work / "runs").glob("*/final_params.npz"))
