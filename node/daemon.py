"""The node daemon: dials the researcher, keeps the control stream alive, runs approved tasks."""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc

from common import __version__
from common.constants import (
    HEARTBEAT_INTERVAL,
    PROTOCOL_VERSION,
    RECONNECT_AFTER_SESSION_MAX_DELAY,
    RECONNECT_BACKOFF,
    RECONNECT_INITIAL_DELAY,
    RECONNECT_MAX_DELAY,
)
from common.errors import ConfigurationError, FedloomError
from common.grpc_options import channel_options
from common.heap_retention import retain_freed_heap
from common.proto import fedloom_pb2 as pb
from common.secagg.advert import NodeIdentity
from node.containment import ContainmentSettings, probe_support
from node.db_connections import keep_connections_open
from node.executor import TaskExecutor
from node.home import NodeHome, utc_now
from node.home_lock import hold_home_lock
from node.registry import DatasetRegistry
from node.status import DaemonStatus, StatusBoard
from node.tasks import TaskHandler
from node.transfer import FederationStub

__all__ = ["EXIT_REFUSED", "NODE_LOG_FORMAT", "NodeDaemon", "diagnose_connect_failure", "run_node"]

log = logging.getLogger(__name__)

#: Exit code when the researcher refuses this node for good (wrong credentials, protocol).
EXIT_REFUSED = 3

#: Seconds a stopping node waits for its task thread to wind down: killing the task process
#: is immediate, so this only bounds a stuck upload or log relay.
TASK_STOP_JOIN_SECONDS = 5.0

#: Seconds to wait for the task zygote's imports (torch, declearn: 2-10 s) before saying
#: hello anyway; a node that says hello warm starts its first round as fast as the others.
ZYGOTE_READY_TIMEOUT_SECONDS = 120.0


class _Session:
    """One connection's outgoing queue; messages sent after it ends are dropped."""

    def __init__(self) -> None:
        self.outbox: queue.Queue[pb.NodeMessage | None] = queue.Queue()
        self.closed = threading.Event()

    def send(self, message: pb.NodeMessage) -> None:
        if not self.closed.is_set():
            self.outbox.put(message)

    def close(self) -> None:
        self.closed.set()
        self.outbox.put(None)


class NodeDaemon:
    """Connects out to the researcher and serves its tasks until stopped."""

    def __init__(
        self,
        home: NodeHome,
        researcher: str,
        *,
        credentials: grpc.ChannelCredentials | None,
        allow_unapproved: bool = False,
        task_timeout: float | None = None,
        limits: pb.WorkerLimits | None = None,
        cert_path: str | None = None,
        secagg_identity: NodeIdentity | None = None,
    ) -> None:
        self.home = home
        self.researcher = researcher
        self._credentials = credentials
        self._stop = threading.Event()
        self._session: _Session | None = None
        self._session_lock = threading.Lock()
        self._executor = TaskExecutor(limits)
        self._tasks: queue.Queue[pb.TaskRequest | None] = queue.Queue()
        self._stub: FederationStub | None = None
        self._call: Any = None
        #: True between a session the researcher ended and the next one: retries are routine.
        self._waiting_quietly = False
        self._handler = TaskHandler(
            home,
            self._executor,
            allow_unapproved=allow_unapproved,
            task_timeout=task_timeout,
            send=self._send,
            stub=lambda: self._stub,
            secagg_identity=secagg_identity,
        )
        self._handler.on_task_change = self._task_changed
        self._board = StatusBoard(home.db_path)
        self._status = DaemonStatus(
            pid=os.getpid(),
            started_at=utc_now(),
            researcher_address=researcher,
            tls=credentials is not None,
            cert_path=cert_path,
            containment=_containment_summary(limits or pb.WorkerLimits()),
        )
        self._status_lock = threading.Lock()

    @property
    def current_experiment(self) -> str | None:
        """Experiment of the task running now, for log lines."""
        return self._handler.current_experiment

    def _publish(self, **changes: Any) -> None:
        """Tell the console what changed; a failure to do so is logged, never fatal."""
        with self._status_lock:
            self._status = replace(self._status, **changes)
            try:
                self._board.publish(self._status)
            except FedloomError as exc:
                log.warning("cannot publish the node status for the console: %s", exc)

    def _task_changed(self, task_id: str | None, experiment_id: str | None) -> None:
        self._publish(current_task=task_id, current_experiment=experiment_id)

    # -- public ---------------------------------------------------------------------------
    def run(self) -> int:
        """Serve until stop(); reconnects with capped backoff after every cut."""
        self._executor.prepare()
        self._publish()
        self._wait_zygote_ready()
        worker = threading.Thread(target=self._task_loop, name="tasks", daemon=True)
        worker.start()
        delay = RECONNECT_INITIAL_DELAY
        max_delay = RECONNECT_MAX_DELAY
        code = 0
        try:
            while not self._stop.is_set():
                outcome = self._connect_once()
                if outcome == "refused":
                    code = EXIT_REFUSED
                    break
                if self._stop.is_set():
                    break
                if outcome == "ended":
                    # The researcher ended its run: the next one is likely soon, so poll
                    # briskly from the start again rather than after a long backoff.
                    self._waiting_quietly = True
                    delay, max_delay = RECONNECT_INITIAL_DELAY, RECONNECT_AFTER_SESSION_MAX_DELAY
                elif outcome == "dropped":
                    delay = RECONNECT_INITIAL_DELAY  # after a good session, retry at once
                level = logging.DEBUG if self._waiting_quietly else logging.WARNING
                log.log(level, "retrying the researcher at %s in %.1f s", self.researcher, delay)
                self._stop.wait(delay)
                delay = min(delay * RECONNECT_BACKOFF, max_delay)
        finally:
            self._tasks.put(None)
            self._executor.close()
            # Let a task killed by the close report how it ended before the process exits.
            worker.join(timeout=TASK_STOP_JOIN_SECONDS)
            self._publish(connected=False, stopped_at=utc_now())
        return code

    def _wait_zygote_ready(self) -> None:
        deadline = time.monotonic() + ZYGOTE_READY_TIMEOUT_SECONDS
        while not self._executor.wait_ready(0.2):
            if self._stop.is_set():
                return
            if time.monotonic() > deadline:
                log.warning(
                    "the task process is still importing after %.0f s; connecting anyway "
                    "(the first round will wait for it)",
                    ZYGOTE_READY_TIMEOUT_SECONDS,
                )
                return
        log.debug("task process ready")

    def stop(self) -> None:
        """Leave the serve loop: close the session and cancel the open stream."""
        self._stop.set()
        with self._session_lock:
            if self._session is not None:
                self._session.close()
            if self._call is not None:
                self._call.cancel()

    # -- connection ---------------------------------------------------------------------------
    def _hello(self) -> pb.NodeMessage:
        datasets = [
            pb.DatasetInfo(
                name=d.name,
                tags=list(d.tags),
                n_samples=d.n_samples,
                shape=list(d.shape),
                data_type=d.data_type,
                columns=list(d.columns),
                target=d.target or "",
            )
            for d in DatasetRegistry(self.home.db_path).list()
        ]
        from common.secagg.keys import load_or_create_keypair

        public_key = load_or_create_keypair(self.home.keys_dir).public_bytes()
        hello = pb.Hello(
            node_id=self.home.node_id,
            node_name=self.home.name,
            datasets=datasets,
            software_version=__version__,
            secagg_public_key=public_key,
        )
        return pb.NodeMessage(
            protocol_version=PROTOCOL_VERSION, node_id=self.home.node_id, hello=hello
        )

    def _channel(self) -> grpc.Channel:
        if self._credentials is None:
            return grpc.insecure_channel(self.researcher, options=channel_options())
        return grpc.secure_channel(self.researcher, self._credentials, options=channel_options())

    def _connect_once(self) -> str:
        """One session: "refused", "ended" (closed by the researcher), "dropped" (cut after
        the welcome) or "unreachable" (no welcome)."""
        session = _Session()
        welcomed = False
        hello = self._hello()

        def outgoing() -> Iterator[pb.NodeMessage]:
            yield hello
            while True:
                message = session.outbox.get()
                if message is None:
                    return
                message.protocol_version = PROTOCOL_VERSION
                message.node_id = self.home.node_id
                yield message

        with self._channel() as channel:
            self._stub = FederationStub(channel)
            responses = self._stub.Connect(outgoing())
            with self._session_lock:
                self._call = responses
            if self._stop.is_set():
                responses.cancel()
            try:
                first = next(responses)
                if first.WhichOneof("body") == "refusal":
                    log.error(
                        "the researcher at %s refused this node: %s",
                        self.researcher,
                        first.refusal.reason,
                    )
                    return "refused"
                log.info(
                    "connected to researcher %s at %s as %s (%s)",
                    first.welcome.researcher_id,
                    self.researcher,
                    self.home.name,
                    self.home.node_id,
                )
                with self._session_lock:
                    self._session = session
                self._handler.researcher_id = first.welcome.researcher_id or self.researcher
                self._publish(
                    connected=True,
                    researcher_id=self._handler.researcher_id,
                    connected_since=utc_now(),
                )
                heart = threading.Thread(
                    target=self._heartbeat, args=(session,), name="heartbeat", daemon=True
                )
                heart.start()
                self._waiting_quietly = False
                welcomed = True
                for message in responses:
                    self._dispatch(message)
                log.info(
                    "the researcher at %s ended the session; waiting for its next run",
                    self.researcher,
                )
                return "ended"
            except grpc.RpcError as exc:
                self._log_rpc_error(exc)
                if exc.code() in (
                    grpc.StatusCode.UNAUTHENTICATED,
                    grpc.StatusCode.PERMISSION_DENIED,
                ):
                    return "refused"
            finally:
                session.close()
                with self._session_lock:
                    if self._session is session:
                        self._session = None
                if self._status.connected:
                    self._publish(connected=False, connected_since=None)
        return "dropped" if welcomed else "unreachable"

    def _log_rpc_error(self, exc: grpc.RpcError) -> None:
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else str(exc)
        if code == grpc.StatusCode.UNAVAILABLE:
            cause = diagnose_connect_failure(details or "", tls=self._credentials is not None)
            if cause is not None:
                log.error(
                    "cannot connect to the researcher at %s: %s (%s)",
                    self.researcher,
                    cause,
                    details,
                )
            elif self._waiting_quietly:
                log.debug("researcher at %s is unreachable (%s)", self.researcher, details)
            else:
                log.warning("researcher at %s is unreachable (%s)", self.researcher, details)
        elif code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            log.error("the researcher at %s refused this node: %s", self.researcher, details)
        elif code == grpc.StatusCode.CANCELLED and self._stop.is_set():
            log.info("connection closed")
        else:
            log.warning(
                "connection to %s lost: %s %s", self.researcher, code.name if code else "", details
            )

    def _heartbeat(self, session: _Session) -> None:
        while not session.closed.wait(HEARTBEAT_INTERVAL):
            busy = self._handler.current_task
            session.send(
                pb.NodeMessage(
                    heartbeat=pb.Heartbeat(
                        time=time.time(), state="busy" if busy else "idle", task_id=busy or ""
                    )
                )
            )

    def _send(self, message: pb.NodeMessage) -> bool:
        with self._session_lock:
            session = self._session
        if session is None:
            return False
        session.send(message)
        return True

    def _dispatch(self, message: pb.ResearcherMessage) -> None:
        if message.protocol_version != PROTOCOL_VERSION:
            log.error(
                "researcher speaks protocol %d, this node %d: install the same fedloom version on both",
                message.protocol_version,
                PROTOCOL_VERSION,
            )
            return
        kind = message.WhichOneof("body")
        if kind == "task":
            self._tasks.put(message.task)
        elif kind == "cancel":
            if not self._executor.cancel(message.cancel.task_id, message.cancel.reason):
                log.info("cancel for task %s ignored: not running", message.cancel.task_id)

    def _task_loop(self) -> None:
        while True:
            task = self._tasks.get()
            if task is None:
                return
            self._handler.handle(task)


#: Markers in gRPC's error details (grpc core + BoringSSL wording, grpcio 1.85) that tell a
#: TLS misconfiguration from a researcher that is simply down. Each maps to a cause naming
#: the fix; "Socket closed" is what a peer sees when the other side drops the handshake.
_UNTRUSTED_SERVER = ("CERTIFICATE_VERIFY_FAILED", "certificate verify failed")
_WRONG_HOST = ("not in peer certificate",)
_SERVER_WITHOUT_TLS = ("WRONG_VERSION_NUMBER",)
_HANDSHAKE_DROPPED = ("Socket closed", "Connection reset")


def diagnose_connect_failure(details: str, *, tls: bool) -> str | None:
    """The likely TLS cause of a failed connection attempt, with its fix; None if not TLS.

    ``details`` is the UNAVAILABLE status text gRPC gives the node; ``tls`` whether this
    node dials with TLS. The researcher never sees these connections (they fail before
    any RPC), so this is the only place such a cause can be explained.
    """
    if any(m in details for m in _UNTRUSTED_SERVER):
        return (
            "this node does not trust the researcher's certificate: --ca must be the CA that "
            "signed it (ask the researcher's operator for their ca.pem)"
        )
    if any(m in details for m in _WRONG_HOST):
        return (
            "the researcher's certificate does not name the host this node dials: use a "
            "--researcher host listed in its certificate, or reissue it with that host"
        )
    if any(m in details for m in _SERVER_WITHOUT_TLS):
        return (
            "the researcher does not speak TLS (it runs with --insecure?): run both sides "
            "with TLS, or both with --insecure for local development"
        )
    if any(m in details for m in _HANDSHAKE_DROPPED):
        if tls:
            return (
                "the researcher closed the connection during the TLS handshake: it most likely "
                "does not accept this node's certificate (--cert issued by another CA, or "
                "expired); use the node.pem issued with the researcher's CA"
            )
        return (
            "the researcher closed the plain-text connection: it most likely requires TLS "
            "(the default); start this node with --ca/--cert/--key instead of --insecure"
        )
    return None


def _channel_credentials(
    tls: dict[str, Any] | None, insecure: bool
) -> grpc.ChannelCredentials | None:
    if insecure:
        log.warning(
            "connecting WITHOUT TLS (--insecure): traffic is readable and the researcher is not "
            "authenticated; use only for local development"
        )
        return None
    if not tls or not all(tls.get(k) for k in ("ca", "cert", "key")):
        raise ConfigurationError(
            "TLS is on by default: pass --ca CA.pem --cert NODE.pem --key NODE.key "
            "(see `fedloom certs init`), or --insecure for local development"
        )
    from common.tls import node_channel_credentials

    return node_channel_credentials(Path(tls["ca"]), Path(tls["cert"]), Path(tls["key"]))


def _secagg_identity(
    home: NodeHome, tls: dict[str, Any] | None, insecure: bool
) -> NodeIdentity | None:
    """The certificate that signs this node's SecAgg round keys; None under --insecure."""
    if insecure or not tls:
        log.warning(
            "SecAgg round keys are NOT signed or verified (--insecure): a researcher could "
            "substitute keys or invent participants and unmask this node's updates"
        )
        return None
    return NodeIdentity.load(ca=Path(tls["ca"]), cert=Path(tls["cert"]), key=Path(tls["key"]))


#: Format of logs/node.log; the console parses it (node.console.logs), keep the two in step.
#: ``experiment`` is the experiment whose task runs when the line is written, ``-`` if none.
NODE_LOG_FORMAT = "%(asctime)s %(levelname)s [%(experiment)s] %(name)s: %(message)s"


class _ExperimentTag(logging.Filter):
    """Adds the experiment of the running task to every record (tasks run one at a time)."""

    def __init__(self, current: Callable[[], str | None]) -> None:
        super().__init__()
        self._current = current

    def filter(self, record: logging.LogRecord) -> bool:
        record.experiment = self._current() or "-"
        return True


def _log_to_file(home: NodeHome, current_experiment: Callable[[], str | None]) -> None:
    home.logs_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(home.logs_dir / "node.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter(NODE_LOG_FORMAT))
    handler.addFilter(_ExperimentTag(current_experiment))
    logging.getLogger().addHandler(handler)
    if logging.getLogger().level > logging.INFO or logging.getLogger().level == logging.NOTSET:
        logging.getLogger().setLevel(logging.INFO)


def _containment_summary(limits: pb.WorkerLimits) -> str:
    """One line for the operator's console: how this daemon confines its tasks."""
    memory = limits.max_memory_bytes // (1024 * 1024)
    return "; ".join(
        [
            "every process of a task is killed with it",
            f"memory capped at {memory} MB" if memory else "no memory cap",
            "writes confined to the task and its experiment's state"
            if limits.confine_writes
            else "writes NOT confined",
            "no network" if limits.isolate_network else "network NOT isolated",
        ]
    )


def _containment_limits(
    home: NodeHome, max_memory_mb: int | None, confinement: str | None, threads: int | None
) -> pb.WorkerLimits:
    """Resolve the operator's containment settings against this kernel, and say what holds."""
    settings = ContainmentSettings.resolve(
        home.config, max_memory_mb=max_memory_mb, confinement=confinement, threads=threads
    )
    support = probe_support()
    limits = settings.worker_limits(support)  # ContainmentError when 'require' is not met
    for ok, sentence in settings.describe(support):
        log.log(logging.INFO if ok else logging.WARNING, "containment: %s", sentence)
    return limits


def run_node(
    home: NodeHome,
    researcher: str,
    *,
    allow_unapproved: bool = False,
    insecure: bool = False,
    tls: dict[str, Any] | None = None,
    task_timeout: float | None = None,
    max_memory_mb: int | None = None,
    confinement: str | None = None,
    threads: int | None = None,
) -> int:
    """Run the node until SIGINT/SIGTERM; returns the process exit code.

    Raises NodeHomeError when another daemon serves this home, and ContainmentError when
    `confinement` is "require" and the kernel cannot provide it.
    """
    running: list[NodeDaemon] = []
    _log_to_file(home, lambda: running[0].current_experiment if running else None)
    keep_connections_open()  # a long-lived process: no reopening around every task
    retain_freed_heap()  # every payload's messages reuse the last one's memory
    with hold_home_lock(home.path):
        try:
            credentials = _channel_credentials(tls, insecure)
        except FedloomError as exc:
            log.error("%s", exc)
            return 2
        try:
            identity = _secagg_identity(home, tls, insecure)
        except FedloomError as exc:
            log.error("%s", exc)
            return 2
        daemon = NodeDaemon(
            home,
            researcher,
            credentials=credentials,
            allow_unapproved=allow_unapproved,
            task_timeout=task_timeout,
            limits=_containment_limits(home, max_memory_mb, confinement, threads),
            cert_path=(tls or {}).get("cert"),
            secagg_identity=identity,
        )
        running.append(daemon)

        def stop(signum: int, frame: object) -> None:
            log.info("received %s, stopping", signal.Signals(signum).name)
            daemon.stop()

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, stop)
            signal.signal(signal.SIGTERM, stop)
        log.info("node %s (%s) starting; researcher %s", home.name, home.node_id, researcher)
        return daemon.run()
