"""Runs training tasks in child processes forked from a warm zygote (see node.worker).

The zygote has torch and the plan API imported; each task is a fresh fork of it, so a task
starts in milliseconds and still shares nothing with the previous one. A plan that crashes,
hangs, exhausts memory or exits takes down only its own process: the daemon turns that into
an error reply and keeps serving. A dead zygote is replaced. The daemon and the task talk
through `WorkerTask` and `WorkerResult` protobuf files (node.worker_protocol).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from common.proto import fedloom_pb2 as pb
from node.worker import LOG_END_KEY, READY_LINE
from node.worker_protocol import (
    WorkerProtocolError,
    error_result,
    read_worker_result,
    write_message,
)

__all__ = ["TASK_FILE", "StartedTask", "TaskExecutor"]

log = logging.getLogger(__name__)

LogSink = Callable[[str, str], None]  # (level, message)

#: Seconds to wait for the zygote to announce a forked task; it only has to fork.
FORK_TIMEOUT_SECONDS = 120.0

#: Seconds to wait for the zygote to report a killed child's exit.
REAP_TIMEOUT_SECONDS = 10.0

#: Seconds the zygote gets, on SIGTERM, to kill the processes of a running task itself.
ZYGOTE_STOP_SECONDS = 5.0

#: Name of the WorkerTask file in a task's scratch directory.
TASK_FILE = "task.pb"

#: Seconds to wait, once a task ended, for the relay to pass on its last log lines: they are
#: already in the pipe then, so only a relay thread starved of CPU needs more than a moment.
LOG_DRAIN_TIMEOUT_SECONDS = 5.0


def thread_limit_env(threads: int) -> dict[str, str]:
    """Environment holding torch (OpenMP, MKL) and numpy's and scipy's OpenBLAS to `threads`.

    Set when the zygote starts, before those libraries load and create their thread pools:
    every task forked from it inherits the counts. Setting them in each task instead, after
    the fork, woke both OpenBLAS thread pools (threadpoolctl's set-threads call starts them)
    and their idle threads spin for about 0.1 s before sleeping: 0.2 CPU-s burnt per task.
    The variables also reach whatever processes the plan starts.
    """
    return {
        name: str(threads)
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    }


class _Zygote:
    """The warm parent process and the reader threads of its pipes."""

    def __init__(self, on_log: Callable[[str, str], None], threads: int = 0) -> None:
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        if threads:
            env.update(thread_limit_env(threads))
        # torch's CPU allocator asks for transparent huge pages on blocks of 2 MB and more:
        # every task is a fresh fork whose model, gradients and optimizer state are new
        # memory, and faulting that in by 2 MB pages rather than 4 kB ones cut a 40 MB
        # tensor's first fill from 140-170 ms to 50-60 ms on our 2-core VM (README,
        # Benchmarks). An operator may set THP_MEM_ALLOC_ENABLE=0 for the node to opt out.
        env.setdefault("THP_MEM_ALLOC_ENABLE", "1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "node.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            env=env,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        # Set once the zygote's imports are done, or when it died (nothing left to wait for).
        self.settled = threading.Event()
        self._logs_ended: set[int] = set()
        self._logs_cond = threading.Condition()
        threading.Thread(target=self._read_protocol, name="zygote-out", daemon=True).start()
        threading.Thread(
            target=_relay,
            args=(self.proc.stderr, on_log, self._log_end),
            name="zygote-log",
            daemon=True,
        ).start()

    def _log_end(self, pid: int) -> None:
        with self._logs_cond:
            self._logs_ended.add(pid)
            self._logs_cond.notify_all()

    def wait_logs_relayed(self, pid: int, timeout: float) -> bool:
        """Block until every log line of task process `pid` went to the sink (False on timeout)."""
        with self._logs_cond:
            relayed = self._logs_cond.wait_for(lambda: pid in self._logs_ended, timeout)
            self._logs_ended.discard(pid)
        return relayed

    def _read_protocol(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.strip() == READY_LINE:
                self.settled.set()
                continue
            self.lines.put(line.strip())
        self.lines.put(None)
        self.settled.set()

    def submit(self, spec_path: Path) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{spec_path}\n")
        self.proc.stdin.flush()

    def next_line(self, timeout: float | None) -> str | None:
        """The next protocol line; None when the zygote died; TimeoutError past `timeout`."""
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty as exc:
            raise TimeoutError from exc

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        """Stop the zygote: SIGTERM first, on which it kills its tasks' processes, then SIGKILL."""
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(ZYGOTE_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                pass
        if self.alive():
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()


@dataclass
class StartedTask:
    """A task handed to the zygote (`TaskExecutor.start`), whose result is not read yet."""

    task_id: str
    result_path: Path
    zygote: _Zygote
    #: time.monotonic() when it was handed over: its timeout runs from here.
    at: float
    #: False when the zygote could not even be given the task (it died).
    submitted: bool = True


class TaskExecutor:
    """Runs one task at a time in a fresh process forked from a warm zygote."""

    def __init__(self, limits: pb.WorkerLimits | None = None) -> None:
        self._limits = limits or pb.WorkerLimits()
        self._lock = threading.Lock()
        self._zygote: _Zygote | None = None
        self._log_sink: LogSink = lambda level, message: None
        self._running: dict[str, int] = {}  # task_id -> child pid
        self._starting: set[str] = set()  # submitted, pid not read yet
        self._cancelled: dict[str, str] = {}
        self._closed = False

    def _relay_log(self, level: str, message: str) -> None:
        self._log_sink(level, message)

    def prepare(self) -> None:
        """Start the zygote now so the first task does not wait for imports."""
        with self._lock:
            if self._zygote is None or not self._zygote.alive():
                self._zygote = _Zygote(self._relay_log, self._limits.threads)

    def wait_ready(self, timeout: float) -> bool:
        """Wait until the zygote started by `prepare()` has done its imports (False on timeout).

        A dead (or not started) zygote counts as settled: the next task starts a new one.
        """
        zygote = self._zygote
        return zygote is None or zygote.settled.wait(timeout)

    def run(self, task: pb.WorkerTask, timeout: float, on_log: LogSink) -> pb.WorkerResult:
        """Run a task under this node's limits; never raises for plan failures, returns an
        error result instead."""
        return self.finish(self.start(task, on_log), timeout)

    def start(self, task: pb.WorkerTask, on_log: LogSink) -> StartedTask:
        """Hand the task to the zygote, which forks its processes, and return at once.

        The caller may still be writing the task's global payload: the plan process builds
        the model, then waits for `task.global_payload_path` to appear (whole, renamed into
        place). `finish` waits for the result; `cancel` ends a started task too.
        """
        task.limits.CopyFrom(self._limits)
        task_path = Path(task.scratch_dir) / TASK_FILE
        write_message(task_path, task)
        self.prepare()
        zygote = self._zygote
        assert zygote is not None
        self._log_sink = on_log
        started = StartedTask(task.task_id, Path(task.result_path), zygote, time.monotonic())
        with self._lock:
            self._starting.add(task.task_id)
        try:
            zygote.submit(task_path)
        except BrokenPipeError:
            started.submitted = False
        return started

    def finish(self, started: StartedTask, timeout: float) -> pb.WorkerResult:
        """Wait for a started task's result (at most `timeout` seconds from its start)."""
        result = self._finish(started, timeout)
        if self._closed and not result.ok:
            # Whatever broke did so because close() killed it: say so, not "worker died".
            return error_result(STOPPED_KIND, "the node was stopped during training")
        return result

    def _finish(self, started: StartedTask, timeout: float) -> pb.WorkerResult:
        task_id, zygote = started.task_id, started.zygote
        try:
            pid, done_early = self._started(zygote) if started.submitted else (None, False)
        except TimeoutError:
            pid, done_early = None, False
        with self._lock:
            self._starting.discard(task_id)
            if pid is not None:
                self._running[task_id] = pid
            cancelled_before = task_id in self._cancelled
        if pid is None:
            self._cancelled.pop(task_id, None)
            zygote.close()
            return error_result(
                "WorkerDied", "the training process could not be started; retry the round"
            )
        if cancelled_before and not done_early:
            _kill_group(pid)  # cancelled while its processes were being forked
        timed_out = False
        remaining = max(0.0, started.at + timeout - time.monotonic())
        try:
            code = 0 if done_early else self._wait_exit(zygote, pid, remaining)
        except TimeoutError:
            timed_out = True
            _kill_group(pid)
            try:
                code = self._wait_exit(zygote, pid, REAP_TIMEOUT_SECONDS)
            except TimeoutError:
                zygote.close()
                code = None
        finally:
            with self._lock:
                self._running.pop(task_id, None)
                cancel_reason = self._cancelled.pop(task_id, None)
        elapsed = time.monotonic() - started.at
        # The reply must not overtake the task's last log lines (often the reason it failed).
        if code is not None and not zygote.wait_logs_relayed(pid, LOG_DRAIN_TIMEOUT_SECONDS):
            log.warning("task %s: its last log lines may reach the researcher late", task_id)
        if cancel_reason is not None:
            return error_result("Cancelled", f"cancelled by the researcher: {cancel_reason}")
        if timed_out:
            return error_result(
                "Timeout", f"training did not finish within {timeout:.0f} s and was stopped"
            )
        if code == 0 and started.result_path.exists():
            try:
                return read_worker_result(started.result_path)
            except WorkerProtocolError as exc:
                return error_result(
                    "WorkerDied", f"the training process left no usable result: {exc}"
                )
        return error_result("WorkerDied", _describe_exit(code, elapsed))

    @staticmethod
    def _started(zygote: _Zygote) -> tuple[int | None, bool]:
        """The pid of the supervisor the zygote forked for the task just submitted (None if
        it could not), and whether it already said `done`.

        `exit` lines of earlier tasks, which ended on their `done`, are skipped; a task's
        own `done` may overtake the zygote's `pid` line, which then follows it.
        """
        done: str | None = None
        while True:
            line = zygote.next_line(FORK_TIMEOUT_SECONDS)
            if line is None:
                return None, False
            kind, _, rest = line.partition(" ")
            if kind == "pid":
                return int(rest), rest == done
            if kind == "done":
                done = rest
            elif kind != "exit":
                return None, False

    @staticmethod
    def _wait_exit(zygote: _Zygote, pid: int, timeout: float) -> int | None:
        """The supervisor's exit code, 0 as soon as it says `done` (its result is written;
        its process is still ending), or None when the zygote died."""
        deadline = time.monotonic() + timeout
        while True:
            line = zygote.next_line(max(0.0, deadline - time.monotonic()))
            if line is None:
                return None  # the zygote itself died
            parts = line.split()
            if parts[:2] == ["done", str(pid)]:
                return 0
            if parts[:2] == ["exit", str(pid)]:
                return int(parts[2])

    def cancel(self, task_id: str, reason: str) -> bool:
        """Kill a running (or starting) task's processes; returns False when no such task runs."""
        with self._lock:
            pid = self._running.get(task_id)
            if pid is None:
                if task_id not in self._starting:
                    return False
                self._cancelled[task_id] = reason  # `finish` kills it once forked
                return True
            self._cancelled[task_id] = reason
        _kill_group(pid)
        return True

    def close(self) -> None:
        """Stop for good: running tasks are killed and end as STOPPED_KIND errors."""
        with self._lock:
            self._closed = True
            pids = list(self._running.values())
            zygote, self._zygote = self._zygote, None
        for pid in pids:
            _kill_group(pid)
        if zygote is not None:
            zygote.close()


#: Error kind of a task killed because the node itself is stopping (Ctrl-C, SIGTERM): an
#: operator's action, logged as such, not a training failure.
STOPPED_KIND = "NodeStopped"


def _describe_exit(code: int | None, elapsed: float) -> str:
    """How a task's supervisor ended without a result (the plan's own end is described by
    the supervisor, in the result)."""
    if code is None:
        return f"the training process vanished after {elapsed:.1f} s (its parent died); retry the round"
    if code < 0:
        name = (
            signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        )
        return f"the training supervisor was killed by signal {name} after {elapsed:.1f} s"
    return (
        f"the training supervisor exited with code {code} after {elapsed:.1f} s without a "
        "result; the node's log says why"
    )


def _kill_group(pid: int) -> None:
    # The child moves to its own process group first thing; kill the group (the plan may
    # have started processes) and the pid itself in case it had not moved yet.
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _relay(stream: IO[str] | None, on_log: LogSink, on_end: Callable[[int], None]) -> None:
    if stream is None:
        return
    for line in stream:
        line = line.rstrip("\n")
        if not line:
            continue
        try:
            record = json.loads(line)
            if isinstance(record, dict) and LOG_END_KEY in record:
                on_end(int(record[LOG_END_KEY]))
                continue
            level, message = record["level"], record["message"]
        except (ValueError, KeyError, TypeError):
            level, message = "WARNING", line
        on_log(level, message[:4000])
