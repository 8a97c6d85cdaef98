"""The payload id a node uploads its answer to a task under, agreed by both sides.

The researcher expects exactly this upload while the task is pending and refuses any other,
so the name is derived from the task, never chosen freely by the node.
"""

from __future__ import annotations

from common.proto import fedloom_pb2 as pb

__all__ = ["upload_payload_id"]


def upload_payload_id(task: pb.TaskRequest) -> str:
    """`reply-<task id>` for training, `correction-<task id>` for SecAgg dropout corrections."""
    prefix = "correction" if task.WhichOneof("kind") == "secagg_correction" else "reply"
    return f"{prefix}-{task.task_id}"
