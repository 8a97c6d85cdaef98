"""The daemon-to-training-process contract: a `WorkerTask` in, a `WorkerResult` out.

Both are protobuf messages (proto/fedloom.proto) written as files in the task's scratch
directory; nothing is JSON or hex-encoded. Every reader validates what it got, so a
truncated file or a result a plan forged becomes a `WorkerProtocolError` naming the file.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from common.errors import FedloomError
from common.proto import fedloom_pb2 as pb

__all__ = [
    "WorkerProtocolError",
    "error_result",
    "read_worker_result",
    "read_worker_task",
    "write_message",
]

#: Largest task or result file accepted: they carry aux vars' small fields and metrics, never
#: model tensors (those are payload files), so 64 MiB is far beyond any honest one.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

_VECTOR_KINDS = ("torch", "numpy")

M = TypeVar("M", bound=Message)


class WorkerProtocolError(FedloomError):
    """A task or result file is missing, unreadable or inconsistent."""


def write_message(path: Path, message: Message) -> None:
    """Write `message` to `path` atomically (a reader never sees half a file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(message.SerializeToString())
    os.replace(tmp, path)


def _read(path: Path, message: M, what: str) -> M:
    try:
        size = path.stat().st_size
        if size > MAX_MESSAGE_BYTES:
            raise WorkerProtocolError(
                f"{what} {path} is {size} bytes, over the {MAX_MESSAGE_BYTES}-byte limit"
            )
        message.ParseFromString(path.read_bytes())
    except FileNotFoundError:
        raise WorkerProtocolError(f"{what} {path} does not exist") from None
    except (OSError, DecodeError) as exc:
        raise WorkerProtocolError(f"{what} {path} cannot be read: {exc}") from exc
    return message


def read_worker_task(path: Path) -> pb.WorkerTask:
    """Load and check a task: ids set, every path absolute, outputs inside the scratch dir."""
    task = _read(Path(path), pb.WorkerTask(), "task file")
    problems = [
        name for name in ("task_id", "experiment_id", "class_name") if not getattr(task, name)
    ]
    paths = (
        "plan_path",
        "dataset_path",
        "global_payload_path",
        "scratch_dir",
        "state_dir",
        "reply_payload_path",
        "result_path",
    )
    problems += [
        f"{name} (not an absolute path)" for name in paths if not os.path.isabs(getattr(task, name))
    ]
    scratch = Path(task.scratch_dir)
    for name in ("reply_payload_path", "result_path", "global_payload_path", "plan_path"):
        value = Path(getattr(task, name))
        if value.is_absolute() and scratch.is_absolute() and value.parent != scratch:
            problems.append(f"{name} (outside scratch_dir)")
    if task.secagg.enabled and not (task.node_id and task.keys_dir and task.ledger_path):
        problems.append("node_id, keys_dir and ledger_path (required with SecAgg)")
    if problems:
        raise WorkerProtocolError(f"task file {path} is invalid: bad {', '.join(problems)}")
    return task


def read_worker_result(path: Path) -> pb.WorkerResult:
    """Load and check a result: an error says why, a success has sane counts and numbers."""
    result = _read(Path(path), pb.WorkerResult(), "result file")
    if not result.ok:
        if not result.error.kind:
            raise WorkerProtocolError(f"result file {path} reports a failure without a reason")
        return result
    problems = []
    if result.n_samples < 0 or result.n_steps < 0:
        problems.append("negative sample or step count")
    if result.vector_kind not in _VECTOR_KINDS:
        problems.append(f"vector_kind {result.vector_kind!r} (expected torch or numpy)")
    if not math.isfinite(result.train_seconds) or result.train_seconds < 0:
        problems.append(f"train_seconds {result.train_seconds!r}")
    if problems:
        raise WorkerProtocolError(f"result file {path} is invalid: {'; '.join(problems)}")
    return result


def error_result(kind: str, message: str, traceback: str = "") -> pb.WorkerResult:
    """A failed WorkerResult."""
    return pb.WorkerResult(
        ok=False, error=pb.TaskError(kind=kind, message=message, traceback=traceback)
    )
