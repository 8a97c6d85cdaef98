"""The daemon <-> training-process files: WorkerTask and WorkerResult, checked on read."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.proto import fedloom_pb2 as pb
from node.worker_protocol import (
    WorkerProtocolError,
    read_worker_result,
    read_worker_task,
    write_message,
)


def _task(scratch: Path, **changes: object) -> pb.WorkerTask:
    task = pb.WorkerTask(
        task_id="t1",
        experiment_id="exp",
        round=1,
        class_name="Plan",
        plan_path=str(scratch / "plan.py"),
        dataset_path="/data/set.csv",
        global_payload_path=str(scratch / "global.bin"),
        scratch_dir=str(scratch),
        state_dir="/home/node/state/exp",
        reply_payload_path=str(scratch / "reply.bin"),
        result_path=str(scratch / "result.pb"),
    )
    for name, value in changes.items():
        setattr(task, name, value)
    return task


def test_a_task_round_trips_through_its_file(tmp_path):
    task = _task(tmp_path)
    task.aux_vars.items.add(module="scaffold", type="ScaffoldAuxVar")
    write_message(tmp_path / "task.pb", task)

    assert read_worker_task(tmp_path / "task.pb") == task


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"task_id": ""}, "task_id"),
        ({"state_dir": "state/exp"}, "state_dir (not an absolute path)"),
        ({"result_path": "/elsewhere/result.pb"}, "result_path (outside scratch_dir)"),
    ],
)
def test_an_invalid_task_is_refused_naming_the_field(tmp_path, changes, named):
    write_message(tmp_path / "task.pb", _task(tmp_path, **changes))

    with pytest.raises(WorkerProtocolError, match="is invalid") as info:
        read_worker_task(tmp_path / "task.pb")
    assert named in str(info.value)


def test_a_secagg_task_needs_the_node_keys_and_ledger(tmp_path):
    task = _task(tmp_path)
    task.secagg.enabled = True
    write_message(tmp_path / "task.pb", task)

    with pytest.raises(WorkerProtocolError, match="required with SecAgg"):
        read_worker_task(tmp_path / "task.pb")


def test_a_missing_or_corrupt_result_file_is_a_protocol_error(tmp_path):
    with pytest.raises(WorkerProtocolError, match="does not exist"):
        read_worker_result(tmp_path / "result.pb")
    (tmp_path / "result.pb").write_bytes(b"\xff\xff\xff")
    with pytest.raises(WorkerProtocolError, match="cannot be read"):
        read_worker_result(tmp_path / "result.pb")


@pytest.mark.parametrize(
    ("result", "problem"),
    [
        (pb.WorkerResult(ok=False), "failure without a reason"),
        (pb.WorkerResult(ok=True, vector_kind="jax"), "vector_kind 'jax'"),
        (pb.WorkerResult(ok=True, vector_kind="torch", n_samples=-1), "negative sample"),
        (
            pb.WorkerResult(ok=True, vector_kind="numpy", train_seconds=float("nan")),
            "train_seconds",
        ),
    ],
)
def test_an_inconsistent_result_is_refused_saying_why(tmp_path, result, problem):
    write_message(tmp_path / "result.pb", result)

    with pytest.raises(WorkerProtocolError) as info:
        read_worker_result(tmp_path / "result.pb")
    assert problem in str(info.value)


def test_a_good_result_reads_back(tmp_path):
    result = pb.WorkerResult(
        ok=True, n_samples=80, n_steps=3, losses=[0.7, 0.6], vector_kind="torch"
    )
    write_message(tmp_path / "result.pb", result)

    assert read_worker_result(tmp_path / "result.pb") == result


class _Lines:
    """The zygote's protocol lines as the executor reads them."""

    def __init__(self, *lines: str) -> None:
        self._lines = list(lines)

    def next_line(self, timeout: float | None) -> str | None:
        return self._lines.pop(0) if self._lines else None


@pytest.mark.parametrize(
    ("lines", "started"),
    [
        (["pid 41"], (41, False)),
        # The previous task ended on its `done`; its `exit` line comes later and is skipped.
        (["exit 40 0", "pid 41"], (41, False)),
        # A task's own `done` may overtake the zygote's `pid` line.
        (["done 41", "pid 41"], (41, True)),
        (["done 39", "exit 40 0", "pid 41"], (41, False)),
        ([], (None, False)),  # the zygote died
        (["garbage"], (None, False)),
    ],
)
def test_the_executor_finds_the_supervisor_of_the_task_it_submitted(
    lines: list[str], started: tuple[int | None, bool]
) -> None:
    from node.executor import TaskExecutor

    assert TaskExecutor._started(_Lines(*lines)) == started  # type: ignore[arg-type]


def test_a_task_ends_on_its_done_line_or_its_exit_code() -> None:
    from node.executor import TaskExecutor

    assert TaskExecutor._wait_exit(_Lines("exit 40 0", "done 41"), 41, 5.0) == 0  # type: ignore[arg-type]
    assert TaskExecutor._wait_exit(_Lines("exit 41 -9"), 41, 5.0) == -9  # type: ignore[arg-type]
    assert TaskExecutor._wait_exit(_Lines(), 41, 5.0) is None  # type: ignore[arg-type]
