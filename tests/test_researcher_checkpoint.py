"""Checkpoints: atomic per-round directories, the last K kept, an Experiment rebuilt from one."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from common.data import DataManager
from common.errors import ConfigurationError
from common.optimizers.declearn import ScaffoldServerModule, YogiModule
from common.optimizers.optimizer import Optimizer
from common.training_plans import TorchTrainingPlan
from researcher.checkpoint import (
    CHECKPOINTS_DIR,
    Checkpoint,
    latest_checkpoint,
    list_checkpoints,
    read_checkpoint,
    write_checkpoint,
)
from researcher.federated_workflows import Experiment
from researcher.history import MetricsLog, NodeRoundRecord, RoundRecord
from researcher.run_options import default_run_options
from researcher.strategies import SamplingStrategy


class CheckpointPlan(TorchTrainingPlan):
    """A plan the researcher only builds (no node runs it here)."""

    def init_dependencies(self):
        return ["import torch", "from common.data import DataManager"]

    def init_model(self):
        return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))

    def training_data(self):
        return DataManager(dataset=np.zeros((2, 3)), target=np.zeros(2))

    def training_step(self, data, target):
        return self.model()(data).sum()


def _checkpoint(round_number: int) -> Checkpoint:
    arrays = {
        "param/w": np.arange(6, dtype=np.float32).reshape(2, 3) * round_number,
        "optim/0": np.array([1.5, -2.0]),
        "param/steps": np.array([round_number], dtype=np.int64),
    }
    return Checkpoint(
        round=round_number,
        state={"experiment_id": "exp-x", "note": [1, 2]},
        arrays=arrays,
        plan_source="class P: pass\n",
    )


def test_a_checkpoint_reads_back_exactly(tmp_path: Path) -> None:
    written = _checkpoint(3)
    path = write_checkpoint(tmp_path, written)
    assert path == tmp_path / CHECKPOINTS_DIR / "round-000003"
    loaded = read_checkpoint(tmp_path)
    assert loaded.round == 3
    assert loaded.state == written.state
    assert loaded.plan_source == written.plan_source
    assert loaded.arrays.keys() == written.arrays.keys()
    for name, value in written.arrays.items():
        assert loaded.arrays[name].dtype == value.dtype
        np.testing.assert_array_equal(loaded.arrays[name], value)
    assert (path / "arrays.bin").read_bytes()[:8] == b"FLPAYLD1"  # fedloom payload file, not pickle


def test_only_the_last_k_checkpoints_are_kept(tmp_path: Path) -> None:
    for round_number in range(6):
        write_checkpoint(tmp_path, _checkpoint(round_number), keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["round-000004", "round-000005"]


def test_rewriting_a_round_replaces_it(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, _checkpoint(2))
    replacement = _checkpoint(2)
    replacement.state["note"] = "replayed"
    write_checkpoint(tmp_path, replacement)
    assert read_checkpoint(tmp_path).state["note"] == "replayed"
    assert len(list((tmp_path / CHECKPOINTS_DIR).iterdir())) == 1


def test_a_half_written_checkpoint_is_invisible_and_cleaned_up(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, _checkpoint(1))
    root = tmp_path / CHECKPOINTS_DIR
    (root / ".tmp-round-000002-dead").mkdir()  # a writer killed before its rename
    (root / ".tmp-round-000002-dead" / "arrays.bin").write_bytes(b"partial")
    (root / "round-000003").mkdir()  # no state.json: not a checkpoint
    assert latest_checkpoint(tmp_path) == root / "round-000001"
    write_checkpoint(tmp_path, _checkpoint(2))
    assert not (root / ".tmp-round-000002-dead").exists()
    assert latest_checkpoint(tmp_path) == root / "round-000002"


def test_unknown_format_is_refused_with_the_reason(tmp_path: Path) -> None:
    path = write_checkpoint(tmp_path, _checkpoint(1))
    state = json.loads((path / "state.json").read_text())
    state["format"] = 99
    (path / "state.json").write_text(json.dumps(state))
    with pytest.raises(ConfigurationError, match="format 99"):
        read_checkpoint(path)


def test_no_checkpoint_names_the_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=f"no checkpoint in {tmp_path}"):
        read_checkpoint(tmp_path)


def _experiment(folder: Path) -> Experiment:
    return Experiment(
        tags=["#t"],
        training_plan_class=CheckpointPlan,
        training_args={"num_updates": 3, "batch_size": 8, "random_seed": 1, "round_timeout": 12.5},
        model_args={"width": 4},
        round_limit=5,
        agg_optimizer=Optimizer(lr=0.3, modules=[ScaffoldServerModule(), YogiModule()]),
        node_selection_strategy=SamplingStrategy(fraction=0.5, min_nodes=2, seed=9),
        experimentation_folder=folder,
    )


def test_load_breakpoint_rebuilds_configuration_params_and_optimizer_state(tmp_path: Path) -> None:
    exp = _experiment(tmp_path / "exp")
    params = exp.training_plan().get_parameters()
    grads = {k: np.full_like(v, 0.1) for k, v in params.items()}
    for _ in range(3):  # give FedYogi some state, as a few rounds would
        exp.agg_optimizer().step_numpy(params, grads)
    exp.breakpoint()

    loaded = Experiment.load_breakpoint(tmp_path / "exp")

    assert loaded.id == exp.id
    assert loaded.round_current() == 0
    assert loaded.tags() == ["#t"]
    assert loaded.round_limit() == 5
    assert loaded.training_args() == exp.training_args()
    assert loaded.model_args() == {"width": 4}
    assert loaded.training_plan_class().__name__ == "CheckpointPlan"
    strategy = loaded.strategy()
    assert isinstance(strategy, SamplingStrategy)
    assert (strategy.fraction, strategy.min_nodes, strategy.seed) == (0.5, 2, 9)
    got = loaded.training_plan().get_parameters()
    for name, value in params.items():
        np.testing.assert_array_equal(got[name], value)
    expected = exp.agg_optimizer().step_numpy(params, grads)
    stepped = loaded.agg_optimizer().step_numpy(got, grads)
    for name in expected:
        np.testing.assert_array_equal(stepped[name], expected[name])


def test_load_breakpoint_without_folder_takes_the_latest_experiment_under_out(
    tmp_path: Path, researcher_address: str
) -> None:
    out = default_run_options().out_dir
    first = Experiment(tags=["#t"], training_plan_class=CheckpointPlan, round_limit=1)
    first.breakpoint()
    second = Experiment(tags=["#t"], training_plan_class=CheckpointPlan, round_limit=2)
    path = second.breakpoint()
    os.utime(path, (path.stat().st_atime + 10, path.stat().st_mtime + 10))
    assert second.experimentation_folder().parent == out
    assert Experiment.load_breakpoint().id == second.id


def test_resume_keeps_the_given_configuration_and_restores_the_experiment_id(
    tmp_path: Path,
) -> None:
    exp = _experiment(tmp_path / "exp")
    exp.breakpoint()

    again = _experiment(tmp_path / "exp")
    again.set_round_limit(8)
    assert again.id != exp.id
    assert again.resume() == 0
    assert again.id == exp.id
    assert again.round_limit() == 8


def test_a_folder_holding_another_experiment_is_refused(tmp_path: Path) -> None:
    _experiment(tmp_path / "exp").breakpoint()
    with pytest.raises(ConfigurationError, match=r"already holds experiment exp-.*resume it"):
        _experiment(tmp_path / "exp").breakpoint()


def test_truncating_metrics_drops_a_line_cut_short_by_a_kill(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.append(RoundRecord(round=1, nodes=[NodeRoundRecord(1, "n1", "alpha", 10, 0.5, {}, 0.1, 3)]))
    with open(log.path, "a", encoding="utf-8") as fh:
        fh.write('{"round": 2, "node": "n1", "lo')
    log.truncate_after(1)
    assert [row["round"] for row in MetricsLog.read(log.path)] == [1]
