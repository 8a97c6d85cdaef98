"""`fedloom new PROJECT`: the files it writes run as made against real nodes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from common.data_split import parse_split
from common.split_files import split_file
from fedloom.cli import main
from fedloom.demo_data import write_demo_csv
from researcher.config import load_experiment_config
from researcher.plan_loader import load_plan_class
from tests.conftest import ROOT, NodeFactory, fedloom_cmd, free_port


def test_new_project_writes_plan_toml_and_readme_naming_the_project(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project = tmp_path / "heart-study"
    assert main(["new", str(project)]) == 0
    assert sorted(p.name for p in project.iterdir()) == ["README.md", "experiment.toml", "plan.py"]
    config = load_experiment_config(project / "experiment.toml")
    assert config.name == "heart-study"
    assert config.tags == ["#heart-study"]
    assert config.plan.file == project / "plan.py"
    assert load_plan_class(config.plan.file, config.plan.class_name).__name__ == "ProjectPlan"
    readme = (project / "README.md").read_text()
    assert "# heart-study" in readme and "'#heart-study'" in readme
    assert "runs/heart-study" in readme
    assert "__" not in readme + (project / "experiment.toml").read_text()
    assert "README.md" in capsys.readouterr().out


def test_new_project_takes_a_tag(tmp_path: Path) -> None:
    assert main(["new", str(tmp_path / "p"), "--tag", "#cohort"]) == 0
    assert load_experiment_config(tmp_path / "p" / "experiment.toml").tags == ["#cohort"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tag", "cohort"], "must start with '#'"),
        (["--tag", "#a,b"], "no spaces, commas"),
    ],
)
def test_new_project_refuses_bad_tags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["new", str(tmp_path / "p"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_new_project_never_writes_into_a_non_empty_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "plan.py").write_text("mine")
    assert main(["new", str(tmp_path / "p")]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert (tmp_path / "p" / "plan.py").read_text() == "mine"


@pytest.mark.slow
def test_new_project_runs_as_made_with_real_nodes(tmp_path: Path, start_node: NodeFactory) -> None:
    project = tmp_path / "study"
    assert main(["new", str(project)]) == 0
    pool = write_demo_csv(project / "data" / "all.csv", node_index=0, n_samples=600)
    parts = split_file(pool, 2, parse_split("dirichlet:1"), project / "data", target="y")
    config = load_experiment_config(project / "experiment.toml")
    plan = load_plan_class(config.plan.file, config.plan.class_name)
    address = f"127.0.0.1:{free_port()}"
    for i, csv in enumerate(parts.paths, start=1):
        start_node(f"node-{i}", [("train", ["#study"], csv, "y")], approve=[plan], address=address)
    done = subprocess.run(
        fedloom_cmd("researcher", "run", str(project / "experiment.toml"), "--address", address,
                    "--insecure", "--out", str(project / "runs"), "--rounds", "2"),
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    folder = project / "runs" / "study"
    assert (folder / "final_params.npz").is_file()
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    trained = {(r["round"], r.get("node_name")) for r in rows if "loss" in r}
    assert {rnd for rnd, _ in trained} == {1, 2}
    assert len(trained) == 4
