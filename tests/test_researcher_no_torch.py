"""A researcher that only aggregates never imports torch: TOML runs probe the plan aside."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.test_researcher_cli_e2e import RUN_TIMEOUT, _experiment_toml, _rows, _start_nodes

pytestmark = pytest.mark.slow

#: Runs `fedloom researcher run` in this interpreter, then reports which heavy modules it loaded.
DRIVER = """
import importlib.abc, json, sys, traceback
from fedloom.cli import main

torch_lookups = []  # where torch was looked up (declearn also checks it is installed)

class Watch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "torch":
            torch_lookups.append("".join(traceback.format_stack(limit=12)))
        return None

sys.meta_path.insert(0, Watch())
code = main(sys.argv[2:])
heavy = sorted(m for m in ("torch", "sklearn") if m in sys.modules)
with open(sys.argv[1], "w") as fh:
    json.dump({"code": code, "heavy": heavy, "where": torch_lookups[-3:]}, fh)
"""


def _run_in_process(evidence: Path, *args: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, str(evidence), "researcher", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=RUN_TIMEOUT,
    )
    assert evidence.is_file(), done.stderr[-3000:]
    result: dict[str, object] = json.loads(evidence.read_text())
    assert result["code"] == 0, done.stderr[-3000:]
    return result


def test_toml_run_and_resume_keep_torch_out_of_the_researcher(
    tmp_path, start_node, researcher_address
):
    toml = _experiment_toml(tmp_path, "lean", rounds=4)
    out = tmp_path / "runs"
    server = ("--address", researcher_address, "--insecure", "--out", str(out))
    _start_nodes(tmp_path, start_node, researcher_address)

    first = _run_in_process(tmp_path / "first.json", "run", str(toml), *server, "--rounds", "3")
    assert "torch" not in first["heavy"], first["where"]
    assert sorted({r["round"] for r in _rows(out / "lean")}) == [1, 2, 3]

    # Resuming rebuilds the plan from the checkpoint's source: probed too, not imported.
    resumed = _run_in_process(tmp_path / "resumed.json", "run", str(toml), *server, "--resume")
    assert "torch" not in resumed["heavy"], resumed["where"]
    assert sorted({r["round"] for r in _rows(out / "lean")}) == [1, 2, 3, 4]


def test_declearn_examples_still_load_on_first_use() -> None:
    code = (
        "import sys, common, declearn\n"
        "assert 'torch' not in sys.modules\n"
        "from declearn.dataset.examples import load_semg_hand_poses, load_mnist\n"
        "assert callable(load_semg_hand_poses) and callable(load_mnist)\n"
        "assert 'torch' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
