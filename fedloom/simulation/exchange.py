"""`SimulationExchange`: the round engine's `Exchange` over virtual nodes trained on Ray.

Everything a task needs travels as files under the experiment's `simulation/` folder, as it
does inside a real node: the global payload (written once per round, linked into each
task's scratch folder), the plan source, the node's `WorkerTask` and `WorkerResult`, and
each virtual node's optimizer state (`state/<node>/`), which `node.worker.run_task` reads
and writes between rounds exactly as on a real node. On a multi-machine Ray cluster that
folder must therefore be on a filesystem every machine mounts at the same path.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from common.errors import ConfigurationError, FedloomError
from common.payload import EncodedPayload
from common.payload_files import read_payload_file, write_sections_file
from common.proto import fedloom_pb2 as pb
from common.task_uploads import upload_payload_id
from fedloom.simulation.pool import ActorPool
from fedloom.simulation.virtual_nodes import VirtualNode, write_shards
from node.worker_protocol import WorkerProtocolError, read_worker_result, write_message
from researcher.rounds.exchange import ExchangeResult, NodeView, ReceivedReply, ReplyHandler
from researcher.rounds.round import RoundSetup

if TYPE_CHECKING:
    from fedloom.simulation.settings import Simulation

__all__ = ["SimulationExchange"]

log = logging.getLogger(__name__)

#: File names inside a task's scratch folder (those of a real node's task folder).
TASK_FILE = "task.pb"
RESULT_FILE = "result.pb"
REPLY_FILE = "reply.bin"


class SimulationExchange:
    """Sends each selected virtual node's train task to the actor pool; replies come back
    as the node's files and are handed to the round engine like uploads from real nodes."""

    def __init__(self, pool: ActorPool, nodes: Sequence[VirtualNode], work: Path) -> None:
        self._pool = pool
        self._nodes = {node.node_id: node for node in nodes}
        self._work = work
        self._plans: dict[str, Path] = {}  # plan sha256 -> its source file
        self._payloads: dict[str, Path] = {}

    @classmethod
    def start(
        cls, sim: Simulation, setup: RoundSetup, folder: Path, pool: ActorPool
    ) -> SimulationExchange:
        """Write the shards (once) and serve them through the simulation's actor pool."""
        work = folder / "simulation"
        nodes = write_shards(
            Path(sim.data), sim.nodes, sim.split, sim.seed, sim.target, setup.tags, work / "shards"
        )
        log.info(
            "simulating %d virtual node(s) (%s split of %s) with %d Ray actor(s)",
            len(nodes),
            sim.split,
            sim.data,
            pool.size,
        )
        return cls(pool, nodes, work)

    # -- Exchange --------------------------------------------------------------------------
    @property
    def address(self) -> str:
        return f"a simulation of {len(self._nodes)} virtual nodes on Ray"

    def connected(self) -> list[NodeView]:
        return list(self._nodes.values())

    def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        return predicate()  # virtual nodes are all there from the start and never leave

    def publish(self, payload: EncodedPayload, node_ids: Sequence[str]) -> str:
        payload_id = f"global-{uuid.uuid4().hex}"
        path = self._work / "payloads" / f"{payload_id}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_sections_file(path, payload.sections())
        self._payloads[payload_id] = path
        return payload_id

    def unpublish(self, payload_id: str) -> None:
        path = self._payloads.pop(payload_id, None)
        if path is not None:
            path.unlink(missing_ok=True)

    def run_tasks(
        self,
        tasks: Mapping[str, pb.TaskRequest],
        timeout: float,
        on_reply: ReplyHandler | None = None,
    ) -> ExchangeResult:
        started = time.monotonic()
        result = ExchangeResult()
        jobs: list[tuple[str, str]] = []
        scratch: dict[str, Path] = {}
        for node_id, task in tasks.items():
            try:
                scratch[node_id] = self._prepare(node_id, task)
            except FedloomError as exc:
                self._fail(result, node_id, str(exc))
                continue
            jobs.append((node_id, str(scratch[node_id] / TASK_FILE)))

        def done(node_id: str) -> None:
            self._collect(node_id, tasks[node_id], scratch[node_id], result, on_reply)

        try:
            failures = self._pool.run(jobs, started + timeout, done)
            for node_id, reason in failures.items():
                self._fail(result, node_id, reason)
        finally:
            for path in scratch.values():
                shutil.rmtree(path, ignore_errors=True)
        result.seconds = time.monotonic() - started
        return result

    # -- one task --------------------------------------------------------------------------
    def _prepare(self, node_id: str, task: pb.TaskRequest) -> Path:
        """Write the node's WorkerTask (and link its inputs) into a fresh scratch folder."""
        node = self._nodes.get(node_id)
        if node is None:
            raise FedloomError("no such virtual node")
        if task.WhichOneof("kind") != "train":
            raise FedloomError(
                f"task kind {task.WhichOneof('kind')!r} is not simulated (only training is)"
            )
        train = task.train
        task.task_id = task.task_id or uuid.uuid4().hex
        plan_path = self._plan_file(train.plan)
        payload_path = self._payloads.get(train.params_payload_id)
        if payload_path is None:
            raise FedloomError(f"unknown global payload {train.params_payload_id!r}")
        scratch = self._work / "tasks" / task.task_id
        scratch.mkdir(parents=True)
        _link(plan_path, scratch / "plan.py")
        _link(payload_path, scratch / "global.bin")
        state_dir = self._work / "state" / node_id / _safe(task.experiment_id)
        state_dir.mkdir(parents=True, exist_ok=True)
        worker_task = pb.WorkerTask(
            task_id=task.task_id,
            experiment_id=task.experiment_id,
            round=task.round,
            class_name=train.plan.class_name,
            plan_path=str(scratch / "plan.py"),
            dataset_path=str(node.shard),
            dataset_type=node.dataset.data_type,
            dataset_target=node.target or "",
            training_args_json=train.training_args_json,
            model_args_json=train.model_args_json,
            global_payload_path=str(scratch / "global.bin"),
            aux_vars=train.aux_vars,
            scratch_dir=str(scratch),
            state_dir=str(state_dir),
            reply_payload_path=str(scratch / REPLY_FILE),
            result_path=str(scratch / RESULT_FILE),
            node_id=node_id,
        )
        write_message(scratch / TASK_FILE, worker_task)
        return scratch

    def _plan_file(self, plan: pb.TrainingPlanSource) -> Path:
        """The plan's source file, written the first time its source comes with a task."""
        path = self._plans.get(plan.sha256)
        if path is None:
            if not plan.source:
                raise FedloomError(f"UnknownPlan: {plan.sha256}")
            path = self._work / "plans" / f"{plan.sha256}.py"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(plan.source, encoding="utf-8")
            self._plans[plan.sha256] = path
        return path

    def _collect(
        self,
        node_id: str,
        task: pb.TaskRequest,
        scratch: Path,
        result: ExchangeResult,
        on_reply: ReplyHandler | None,
    ) -> None:
        """Turn the node's WorkerResult and reply payload into the reply a real node sends."""
        try:
            worker_result = read_worker_result(scratch / RESULT_FILE)
        except WorkerProtocolError as exc:
            self._fail(result, node_id, f"BadResult: {exc}")
            return
        if not worker_result.ok:
            error = worker_result.error
            text = f"{error.kind}: {error.message}" if error.kind else error.message
            self._fail(result, node_id, text + (f"\n{error.traceback}" if error.traceback else ""))
            return
        reply = pb.TaskReply(
            task_id=task.task_id,
            experiment_id=task.experiment_id,
            round=task.round,
            ok=True,
            payload_id=upload_payload_id(task),
            n_samples=worker_result.n_samples,
            aux_vars=worker_result.aux_vars,
            metrics=dict(worker_result.metrics),
            losses=list(worker_result.losses),
            train_seconds=worker_result.train_seconds,
            n_steps=worker_result.n_steps,
        )
        try:
            sections = read_payload_file(scratch / REPLY_FILE).sections()
            received = ReceivedReply(node_id, reply, sections)
            if on_reply is None:
                result.replies[node_id] = received
            else:
                on_reply(received)
        except FedloomError as exc:
            self._fail(result, node_id, f"reply refused: {exc}")
            return
        result.answered.append(node_id)

    def _fail(self, result: ExchangeResult, node_id: str, reason: str) -> None:
        result.failures[node_id] = reason
        node = self._nodes.get(node_id)
        log.error("node %s: %s", node.label if node else node_id, reason)


def _link(source: Path, target: Path) -> None:
    """A hard link (no copy) where the filesystem allows, else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _safe(experiment_id: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in experiment_id)
    if not safe:
        raise ConfigurationError("empty experiment id")
    return safe
