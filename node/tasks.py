"""Handling one train task on the node: approval, dataset, download, isolated run, upload, reply."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from common.errors import DatasetError, FedloomError, PlanError
from common.plan_hash import plan_hash
from common.proto import fedloom_pb2 as pb
from common.secagg.advert import NodeIdentity
from common.task_uploads import upload_payload_id
from common.trace import span
from common.training_args import TrainingArgs
from node.executor import STOPPED_KIND, TaskExecutor
from node.home import NodeHome
from node.plans import PlanRegistry
from node.privacy_gate import PrivacyGate
from node.registry import DatasetRegistry
from node.secagg_tasks import SECAGG_TASK_KINDS, SecaggTasks, double_masking_spec
from node.served import ServedTasks
from node.transfer import FederationStub, download_payload, upload_with_retry

__all__ = ["TaskHandler"]

log = logging.getLogger(__name__)

#: Extra seconds granted beyond the researcher's round timeout before the node kills a
#: task itself: the researcher's deadline should fire first and say why.
TIMEOUT_SLACK_SECONDS = 5.0

#: Seconds to wait for the processes of a task abandoned before training (its download
#: failed) to be killed and reaped.
REAP_SECONDS = 30.0

#: SecAgg sessions remembered for dropout corrections: a correction is only ever asked
#: for the round just trained, so a handful covers concurrent experiments.
MAX_SECAGG_SESSIONS = 16


class TaskRefused(FedloomError):
    """A task the node will not run; `kind` names the reason for the researcher."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class TaskHandler:
    """Runs tasks one at a time and replies on whatever connection is current."""

    def __init__(
        self,
        home: NodeHome,
        executor: TaskExecutor,
        *,
        allow_unapproved: bool,
        task_timeout: float | None,
        send: Callable[[pb.NodeMessage], bool],
        stub: Callable[[], FederationStub | None],
        secagg_identity: NodeIdentity | None = None,
    ) -> None:
        self.home = home
        self._secagg = SecaggTasks(home.node_id, home.path, secagg_identity)
        self._executor = executor
        self._allow_unapproved = allow_unapproved
        self._task_timeout = task_timeout
        self._send = send
        self._stub = stub
        self.current_task: str | None = None
        self.current_experiment: str | None = None
        #: Id of the researcher the daemon is connected to (from its Welcome); recorded with
        #: the plans it asks for and the tasks served, so the operator knows who asked.
        self.researcher_id = "researcher"
        #: Called with (task id, experiment id) when a task starts and (None, None) when it ends.
        self.on_task_change: Callable[[str | None, str | None], None] = lambda task, exp: None
        self._sessions: dict[str, pb.SecaggContext] = {}
        self._upload_deadline = 0.0
        self._served = ServedTasks(home.db_path)
        self._privacy = PrivacyGate(home)

    def handle(self, task: pb.TaskRequest) -> None:
        """Run a task and send its reply; never raises."""
        self.current_task = task.task_id
        self.current_experiment = task.experiment_id
        with span("node.record_start"):
            self._record_start(task)
        started = time.monotonic()
        #: Until when a cut upload is retried and an unsent reply waits for a connection.
        self._upload_deadline = started + self._timeout(task)
        task_dir = self.home.path / "tasks" / uuid.uuid4().hex[:12]
        task_dir.mkdir(parents=True)
        try:
            self._handle(task, task_dir, started)
        finally:
            # After the reply went out: deleting the task's model-sized files is not the
            # researcher's wait.
            with span("node.cleanup"):
                shutil.rmtree(task_dir, ignore_errors=True)

    def _handle(self, task: pb.TaskRequest, task_dir: Path, started: float) -> None:
        try:
            with span("node.task", round=task.round):
                reply = self._run(task, task_dir)
        except TaskRefused as exc:
            log.error("task %s refused: %s", task.task_id, exc)
            reply = _error_reply(task, exc.kind, str(exc))
        except FedloomError as exc:
            log.error("task %s failed: %s", task.task_id, exc)
            reply = _error_reply(task, type(exc).__name__, str(exc))
        except grpc.RpcError as exc:
            log.error("task %s: transfer with the researcher failed: %s", task.task_id, exc)
            reply = _error_reply(task, "TransferError", f"payload transfer failed: {exc}")
        except Exception as exc:  # the daemon must survive anything a task does
            log.exception("task %s: unexpected error", task.task_id)
            reply = _error_reply(task, type(exc).__name__, f"node-side error: {exc}")
        with span("node.record_end"):
            self._record_end(task, reply, time.monotonic() - started)
        self.current_task = None
        self.current_experiment = None
        self.on_task_change(None, None)
        stopped = reply.error.kind == STOPPED_KIND  # the daemon is stopping: no waiting
        sent = self._send(pb.NodeMessage(reply=reply)) if stopped else self._send_reply(reply)
        if not sent and not stopped:
            log.warning(
                "task %s finished but the researcher is not connected; reply dropped", task.task_id
            )

    def _send_reply(self, reply: pb.TaskReply) -> bool:
        """Send the reply, waiting (until the upload deadline) for a link that is reconnecting."""
        while not self._send(pb.NodeMessage(reply=reply)):
            if time.monotonic() + 0.2 > self._upload_deadline:
                return False
            time.sleep(0.2)
        return True

    def _record_start(self, task: pb.TaskRequest) -> None:
        kind = task.WhichOneof("kind") or ""
        plan = task.train.plan if kind == "train" else None
        try:
            self._served.started(
                task.task_id,
                task.experiment_id,
                task.round,
                kind,
                self.researcher_id,
                plan_id=plan.sha256[:12] if plan else "",
                plan_class=plan.class_name if plan else "",
                dataset=task.train.dataset_name if plan else "",
            )
        except FedloomError as exc:  # bookkeeping must never cost the researcher a round
            log.error("task %s: cannot record it in the node database: %s", task.task_id, exc)
        self.on_task_change(task.task_id, task.experiment_id)

    def _record_end(self, task: pb.TaskRequest, reply: pb.TaskReply, seconds: float) -> None:
        try:
            self._served.finished(
                task.task_id,
                seconds=seconds,
                ok=reply.ok,
                n_samples=reply.n_samples if reply.ok else None,
                n_steps=reply.n_steps if reply.ok else None,
                losses=tuple(reply.losses),
                metrics=dict(reply.metrics),
                error_kind=reply.error.kind,
                error_message=reply.error.message,
            )
        except FedloomError as exc:
            log.error(
                "task %s: cannot record its outcome in the node database: %s", task.task_id, exc
            )

    # -- steps ---------------------------------------------------------------------------
    def _run(self, task: pb.TaskRequest, task_dir: Path) -> pb.TaskReply:
        kind = task.WhichOneof("kind")
        if kind == "secagg_correction":
            return self._secagg_correction(task, task_dir)
        if kind in SECAGG_TASK_KINDS:
            return self._secagg.run(task)
        if kind == "analytics":
            return self._analytics(task, task_dir)
        if kind != "train":
            raise TaskRefused("UnsupportedTask", f"this node does not know task kind {kind!r}")
        with span("node.prepare"):
            return self._train(task, task_dir)

    def _train(self, task: pb.TaskRequest, task_dir: Path) -> pb.TaskReply:
        train = task.train
        training_args = TrainingArgs.from_json(train.training_args_json)  # refuse bad ones early
        plan_path = self._approved_plan(train.plan, task_dir)
        dataset = self._dataset(train.dataset_name)
        privacy_view = self._privacy.view(
            task, dataset.name, training_args, researcher=self.researcher_id
        )
        stub = self._stub()
        if stub is None:
            raise TaskRefused("Disconnected", "lost the researcher before the task started")
        global_path = task_dir / "global.bin"
        state_dir = self._state_dir(task.experiment_id)
        state_dir.mkdir(parents=True, exist_ok=True)  # the plan may write only inside it
        worker_task = pb.WorkerTask(
            task_id=task.task_id,
            experiment_id=task.experiment_id,
            round=task.round,
            class_name=train.plan.class_name,
            plan_path=str(plan_path),
            dataset_path=dataset.path,
            dataset_type=dataset.data_type,
            dataset_target=dataset.target or "",
            dataset_options_json=json.dumps(dict(dataset.options)),
            training_args_json=train.training_args_json,
            model_args_json=train.model_args_json,
            global_payload_path=str(global_path),
            aux_vars=train.aux_vars,
            scratch_dir=str(task_dir),
            state_dir=str(state_dir),
            reply_payload_path=str(task_dir / "reply.bin"),
            result_path=str(task_dir / "result.pb"),
            dp_ledger_json=privacy_view.to_json() if privacy_view is not None else "",
        )
        if train.secagg.enabled:
            self._sessions[train.secagg.session_id] = train.secagg
            while len(self._sessions) > MAX_SECAGG_SESSIONS:
                self._sessions.pop(next(iter(self._sessions)))
            worker_task.secagg.CopyFrom(train.secagg)
            worker_task.node_id = self.home.node_id
            worker_task.keys_dir = str(self.home.keys_dir)
            worker_task.ledger_path = str(self._ledger_path)
            worker_task.secagg_sessions_dir = double_masking_spec(
                self.home.path, self.home.node_id
            )["state_dir"]
        timeout = self._timeout(task)
        # The task's processes start (fork, plan, model) while the global model downloads.
        started = self._executor.start(
            worker_task, lambda level, msg: self._relay(task, level, msg)
        )
        try:
            with span("node.download"):
                partial = global_path.with_name(global_path.name + ".part")
                download_payload(stub, self.home.node_id, train.params_payload_id, partial)
                os.replace(partial, global_path)  # the plan process waits for this name
        except BaseException:
            self._executor.cancel(task.task_id, "the global model could not be downloaded")
            self._executor.finish(started, REAP_SECONDS)
            raise
        # Logged once the global model is here: from now on the round trains.
        log.info(
            "round %d of %s: training plan %s on dataset %s",
            task.round,
            task.experiment_id,
            train.plan.class_name,
            dataset.name,
        )
        with span("node.execute"):
            result = self._executor.finish(started, timeout)
        if not result.ok:
            reply = _error_reply(task, result.error.kind or "PlanError", result.error.message)
            reply.error.traceback = result.error.traceback
            if reply.error.kind == STOPPED_KIND:
                log.info("task %s abandoned: %s", task.task_id, reply.error.message)
            else:
                log.error("training failed: %s: %s", reply.error.kind, reply.error.message)
            return reply
        dp_epsilon = self._privacy.record(
            task, dataset.name, training_args, result, researcher=self.researcher_id
        )
        payload_id = upload_payload_id(task)
        with span("node.upload"):
            upload_with_retry(
                self._stub,
                self.home.node_id,
                payload_id,
                Path(worker_task.reply_payload_path),
                self._upload_deadline,
            )
        return pb.TaskReply(
            task_id=task.task_id,
            experiment_id=task.experiment_id,
            round=task.round,
            ok=True,
            payload_id=payload_id,
            # Under SecAgg with protected parameters the sample count travels masked only.
            n_samples=0
            if train.secagg.enabled and train.secagg.protect_parameters
            else result.n_samples,
            aux_vars=result.aux_vars,
            metrics=dict(result.metrics),
            losses=list(result.losses),
            train_seconds=result.train_seconds,
            n_steps=result.n_steps,
            dp_epsilon=dp_epsilon or 0.0,
            dp_delta=training_args.local_dp.delta
            if training_args.local_dp is not None and dp_epsilon is not None
            else 0.0,
        )

    def _secagg_correction(self, task: pb.TaskRequest, task_dir: Path) -> pb.TaskReply:
        """Recompute this node's masks toward dropped peers so the survivors' sum can be unmasked."""
        from common.payload_files import write_payload_file
        from common.secagg import CorrectionLedger, NodeMasker, load_or_create_keypair
        from common.secagg.protect import context_settings

        request = task.secagg_correction
        context = self._sessions.get(request.session_id)
        if context is None:
            raise TaskRefused(
                "UnknownSession",
                f"node {self.home.name} has no SecAgg session {request.session_id!r} (restarted since "
                "it trained?); the round cannot be recovered and must be run again",
            )
        masker = NodeMasker(
            context.session_id,
            self.home.node_id,
            load_or_create_keypair(self.home.keys_dir),
            {peer.node_id: bytes(peer.public_key) for peer in context.peers},
            context_settings(context),
            ledger=CorrectionLedger(self._ledger_path),
        )
        arrays = {
            name: masker.dropout_correction(name, request.dropped) for name in request.payload_names
        }
        path = task_dir / "correction.bin"
        write_payload_file(path, arrays)
        stub = self._stub()
        if stub is None:
            raise TaskRefused("Disconnected", "lost the researcher before sending the correction")
        payload_id = upload_payload_id(task)
        upload_with_retry(self._stub, self.home.node_id, payload_id, path, self._upload_deadline)
        log.info(
            "sent SecAgg dropout corrections for %d payload(s), dropped %s",
            len(arrays),
            list(request.dropped),
        )
        return pb.TaskReply(
            task_id=task.task_id,
            experiment_id=task.experiment_id,
            round=task.round,
            ok=True,
            payload_id=payload_id,
        )

    def _analytics(self, task: pb.TaskRequest, task_dir: Path) -> pb.TaskReply:
        """Cohort statistics of a registered dataset (node/analytics), uploaded as a payload."""
        from common.payload_files import write_sections_file
        from node.analytics import CohortPolicy, analytics_answer

        request = task.analytics
        record = self._dataset(request.dataset_name)
        sections, n_rows = analytics_answer(
            request,
            record,
            min_cohort=CohortPolicy(self.home.db_path).min_cohort(record.name),
            fix=f"fedloom node --home {self.home.path} dataset min-cohort {record.name} N",
            masker=lambda: self._secagg.participant.masker(request.secagg),
        )
        path = task_dir / "analytics.bin"
        write_sections_file(path, sections)
        payload_id = upload_payload_id(task)
        upload_with_retry(self._stub, self.home.node_id, payload_id, path, self._upload_deadline)
        secure = request.secagg.enabled
        log.info(
            "answered cohort statistics of %s over columns %s%s",
            record.name,
            list(request.columns),
            " under SecAgg" if secure else "",
        )
        return pb.TaskReply(
            task_id=task.task_id,
            experiment_id=task.experiment_id,
            round=task.round,
            ok=True,
            payload_id=payload_id,
            n_samples=0 if secure else n_rows,  # under SecAgg the count travels masked only
        )

    @property
    def _ledger_path(self) -> Path:
        return self.home.path / "secagg_ledger.json"

    def _timeout(self, task: pb.TaskRequest) -> float:
        limits = [
            t
            for t in (
                self._task_timeout,
                task.timeout_seconds + TIMEOUT_SLACK_SECONDS if task.timeout_seconds else None,
            )
            if t
        ]
        return min(limits) if limits else 24 * 3600.0

    def _approved_plan(self, plan: pb.TrainingPlanSource, task_dir: Path) -> Path:
        registry = PlanRegistry(self.home.db_path)
        if plan.source:
            actual = plan_hash(plan.source)
            if actual != plan.sha256:
                raise TaskRefused(
                    "PlanHashMismatch",
                    f"the plan source hashes to {actual[:12]}, the researcher announced {plan.sha256[:12]}: "
                    "install the same fedloom version on both sides",
                )
        status = registry.status(plan.sha256)
        if status is None:
            if not plan.source:
                raise TaskRefused("UnknownPlan", plan.sha256)
            registry.record_request(
                plan.sha256, plan.class_name, plan.source, researcher=self.researcher_id
            )
            status = registry.status(plan.sha256)
        record = registry.get(plan.sha256)
        plan_id = plan.sha256[:12]
        if status != "approved":
            if self._allow_unapproved and status != "rejected":
                log.warning(
                    "running UNAPPROVED training plan %s (%s): --allow-unapproved is on",
                    plan_id,
                    plan.class_name,
                )
            elif status == "rejected":
                why = f" (reason: {record.reason})" if record.reason else ""
                raise TaskRefused(
                    "PlanRejected",
                    f"training plan {plan_id} ({plan.class_name}) was rejected by the operator of node "
                    f"{self.home.name}{why}; send a different plan or ask them to run "
                    f"`fedloom node --home {self.home.path} plan approve {plan_id}`",
                )
            else:
                raise TaskRefused(
                    "PlanNotApproved",
                    f"training plan {plan_id} ({plan.class_name}) is not approved on node {self.home.name}; "
                    f"its operator must review it and run `fedloom node --home {self.home.path} plan approve {plan_id}`",
                )
        path = task_dir / "plan.py"
        path.write_text(record.source, encoding="utf-8")
        return path

    def _dataset(self, name: str) -> Any:
        registry = DatasetRegistry(self.home.db_path)
        try:
            dataset = registry.get(name)
        except DatasetError as exc:
            raise TaskRefused("UnknownDataset", f"node {self.home.name}: {exc}") from exc
        if not Path(dataset.path).exists():
            raise TaskRefused(
                "DatasetMissing",
                f"dataset {name!r} on node {self.home.name} points to {dataset.path}, which no longer exists",
            )
        verdict = registry.verify(name)
        if not verdict.ok:
            problems = "; ".join(verdict.problems) or "content hash differs"
            raise TaskRefused(
                "DatasetChanged",
                f"dataset {name!r} on node {self.home.name} no longer matches its registration: "
                f"{problems}. Its operator must check the data, then register it again "
                f"(`fedloom node --home {self.home.path} dataset remove {name}`, then `dataset add`)",
            )
        return dataset

    def _state_dir(self, experiment_id: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in experiment_id)
        if not safe:
            raise PlanError("empty experiment id")
        return self.home.state_dir / safe

    def _relay(self, task: pb.TaskRequest, level: str, message: str) -> None:
        numeric = logging.getLevelName(level.upper())
        logging.getLogger("node.plan").log(
            numeric if isinstance(numeric, int) else logging.INFO, "%s", message
        )
        self._send(
            pb.NodeMessage(
                log=pb.LogRecord(
                    level=level, message=message, task_id=task.task_id, time=time.time()
                )
            )
        )


def _error_reply(task: pb.TaskRequest, kind: str, message: str) -> pb.TaskReply:
    return pb.TaskReply(
        task_id=task.task_id,
        experiment_id=task.experiment_id,
        round=task.round,
        ok=False,
        error=pb.TaskError(kind=kind, message=message),
    )
