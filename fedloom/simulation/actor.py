"""What a Ray actor of the pool does: train one virtual node's task with the node's own code.

The task arrives as the node's `WorkerTask` file, checked by the node's reader, and is
trained by `node.worker.run_task`, the function a real node's plan process calls; the
result goes back as the node's `WorkerResult` file. Only the process isolation of a real
node (fork, confinement, memory cap) is left out: the simulation runs the researcher's own
plan on the researcher's own data.
"""

from __future__ import annotations

import logging
import os
import traceback
from pathlib import Path

from node.worker import PLAN_PAYLOAD, TRACEBACK_FRAMES, run_task
from node.worker_protocol import error_result, read_worker_task, write_message

__all__ = ["VirtualNodeActor", "run_virtual_node_task"]


def run_virtual_node_task(task_path: Path) -> None:
    """Train the task in `task_path`; its result (or why it failed) goes to its result file."""
    task = read_worker_task(task_path)
    try:
        result = run_task(task)
        os.replace(Path(task.scratch_dir) / PLAN_PAYLOAD, task.reply_payload_path)
    except Exception as exc:  # a plan error is the node's reply, as on a real node
        frames = traceback.format_exception(type(exc), exc, exc.__traceback__)
        summary = "".join(frames[-TRACEBACK_FRAMES:]).strip()
        result = error_result(type(exc).__name__, str(exc) or type(exc).__name__, summary)
    write_message(Path(task.result_path), result)


class VirtualNodeActor:
    """One worker of the pool: trains the virtual nodes' tasks it is given, one at a time.

    It keeps nothing of a virtual node between tasks: the node's optimizer state is read
    from and written to the node's state folder by `run_task`, as on a real node.
    """

    def __init__(self) -> None:
        logging.basicConfig(level=logging.WARNING, force=True)
        # Imported once per actor, not per task: these are what makes a task start slowly.
        import common.optimizers.adapters
        import common.optimizers.aux_codec
        import common.training_plans  # noqa: F401

    def run(self, task_path: str) -> str:
        """Train the task; returns `task_path` so the pool knows which task ended."""
        run_virtual_node_task(Path(task_path))
        return task_path

    def pid(self) -> int:
        return os.getpid()
