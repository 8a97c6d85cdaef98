"""A node task trains in its downloaded global model's file only when that file is its own."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from common.payload_files import read_payload_file, write_sections_file
from common.proto import fedloom_pb2 as pb
from common.training_args import TrainingArgs
from common.training_plans.source import plan_source
from node.worker import PLAN_PAYLOAD, run_task
from tests.conftest import plan_task, write_tabular_csv
from tests.plans.tabular import LogisticPlan, make_logistic_data

ARGS = {"num_updates": 3, "batch_size": 20}


def _task(tmp_path: Path, global_file: Path) -> pb.WorkerTask:
    """A training task as the node's daemon (or the simulation) hands it to `run_task`."""
    scratch = tmp_path / "task"
    scratch.mkdir()
    (tmp_path / "state").mkdir()
    (scratch / "plan.py").write_text(plan_source(LogisticPlan))
    x, y = make_logistic_data(seed=1, n=80)
    plan = LogisticPlan()
    plan.post_init({}, TrainingArgs.from_dict(ARGS))
    write_sections_file(global_file, {pb.PAYLOAD_SECTION_PARAMS: plan.get_parameters()})
    data = write_tabular_csv(tmp_path / "data.csv", x, y)
    return plan_task(  # type: ignore[no-any-return]
        scratch,
        "LogisticPlan",
        data,
        ARGS,
        tmp_path / "state",
        dataset_type="csv",
        dataset_target="y",
    )


def _params(path: Path) -> dict[str, np.ndarray]:
    payload = read_payload_file(path).sections()[pb.PAYLOAD_SECTION_PARAMS]
    return {k: np.array(v) for k, v in payload.items()}


def test_a_task_trains_in_its_own_global_file_which_becomes_the_reply(tmp_path: Path) -> None:
    task = _task(tmp_path, tmp_path / "download.bin")
    os.replace(tmp_path / "download.bin", task.global_payload_path)  # as the daemon does
    inode = os.stat(task.global_payload_path).st_ino
    start = _params(Path(task.global_payload_path))

    assert run_task(task).ok
    reply = Path(task.scratch_dir) / PLAN_PAYLOAD
    assert os.stat(reply).st_ino == inode  # the same file: trained in, not written anew
    assert not Path(task.global_payload_path).exists()
    trained = _params(reply)
    assert any(not np.array_equal(trained[k], start[k]) for k in start)


def test_a_global_file_linked_elsewhere_is_never_trained_in(tmp_path: Path) -> None:
    # The simulation links one global model into every virtual node's task folder.
    shared = tmp_path / "round-global.bin"
    task = _task(tmp_path, shared)
    os.link(shared, task.global_payload_path)
    before = shared.read_bytes()

    assert run_task(task).ok
    assert shared.read_bytes() == before  # the other virtual nodes still get the global
    reply = Path(task.scratch_dir) / PLAN_PAYLOAD
    assert os.stat(reply).st_ino != os.stat(shared).st_ino
    trained, start = _params(reply), _params(shared)
    assert any(not np.array_equal(trained[k], start[k]) for k in start)
