"""Runs training tasks in child processes: one warm spare ahead of time, a fresh one per task.

A plan that crashes, hangs, exhausts memory or exits takes down only its own process; the
daemon turns that into an error reply and keeps serving.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

__all__ = ["TaskExecutor", "TaskOutcome"]

log = logging.getLogger(__name__)

LogSink = Callable[[str, str], None]  # (level, message)

#: Seconds a killed worker gets to exit after SIGTERM before SIGKILL.
KILL_GRACE_SECONDS = 2.0


@dataclass
class TaskOutcome:
    """The worker's result dict, or an error describing how the process ended."""

    result: dict[str, Any]


class TaskExecutor:
    """Keeps one idle worker process ready and runs each task in its own process."""

    def __init__(self, *, max_memory_mb: int | None = None) -> None:
        self._max_memory_mb = max_memory_mb
        self._spare: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()
        self._running: dict[str, subprocess.Popen[str]] = {}
        self._cancelled: dict[str, str] = {}
        self._closed = False

    def _spawn(self) -> subprocess.Popen[str]:
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        # One thread per worker: the node shares its machine and the daemon must stay responsive.
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) - 1)))
        return subprocess.Popen(
            [sys.executable, "-m", "node.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            env=env,
        )

    def prepare(self) -> None:
        """Start the spare worker now so the first task does not pay for imports."""
        with self._lock:
            if self._spare is None and not self._closed:
                self._spare = self._spawn()

    def _take(self) -> subprocess.Popen[str]:
        with self._lock:
            proc, self._spare = self._spare, None
        if proc is None or proc.poll() is not None:
            proc = self._spawn()
        threading.Thread(target=self.prepare, name="spare-worker", daemon=True).start()
        return proc

    def run(
        self, task_id: str, spec: dict[str, Any], spec_path: Path, timeout: float, on_log: LogSink
    ) -> TaskOutcome:
        """Run a task; never raises for plan failures, returns an error result instead."""
        spec = {**spec, "max_memory_mb": self._max_memory_mb}
        spec_path.write_text(json.dumps(spec), encoding="utf-8")
        result_path = Path(spec["result_path"])
        proc = self._take()
        with self._lock:
            self._running[task_id] = proc
        readers = [
            threading.Thread(target=_relay, args=(proc.stderr, on_log, True), daemon=True),
            threading.Thread(target=_relay, args=(proc.stdout, on_log, False), daemon=True),
        ]
        for reader in readers:
            reader.start()
        started = time.monotonic()
        try:
            assert proc.stdin is not None
            proc.stdin.write(f"{spec_path}\n")
            proc.stdin.flush()
            proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            code = proc.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill(proc)
            code = proc.returncode
        for reader in readers:
            reader.join(timeout=2.0)
        with self._lock:
            self._running.pop(task_id, None)
            cancel_reason = self._cancelled.pop(task_id, None)
        elapsed = time.monotonic() - started
        if cancel_reason is not None:
            return TaskOutcome(_error("Cancelled", f"cancelled by the researcher: {cancel_reason}"))
        if timed_out:
            return TaskOutcome(
                _error("Timeout", f"training did not finish within {timeout:.0f} s and was stopped")
            )
        if result_path.exists():
            return TaskOutcome(json.loads(result_path.read_text(encoding="utf-8")))
        return TaskOutcome(_error("WorkerDied", _describe_exit(code, elapsed, self._max_memory_mb)))

    def cancel(self, task_id: str, reason: str) -> bool:
        """Kill a running task's process; returns False when no such task runs."""
        with self._lock:
            proc = self._running.get(task_id)
            if proc is None:
                return False
            self._cancelled[task_id] = reason
        _kill(proc)
        return True

    def close(self) -> None:
        with self._lock:
            self._closed = True
            procs = [*self._running.values(), *([self._spare] if self._spare else [])]
            self._spare = None
        for proc in procs:
            _kill(proc)


def _error(kind: str, message: str) -> dict[str, Any]:
    return {"ok": False, "kind": kind, "message": message, "traceback": ""}


def _describe_exit(code: int | None, elapsed: float, max_memory_mb: int | None) -> str:
    if code is not None and code < 0:
        name = (
            signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        )
        hint = " (possibly out of memory)" if -code == signal.SIGKILL else ""
        return f"the training process was killed by signal {name} after {elapsed:.1f} s{hint}"
    limit = f" under the node's {max_memory_mb} MB memory limit" if max_memory_mb else ""
    return f"the training process exited with code {code} after {elapsed:.1f} s without a result{limit}"


def _kill(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=KILL_GRACE_SECONDS)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def _relay(stream: IO[str] | None, on_log: LogSink, structured: bool) -> None:
    if stream is None:
        return
    for line in stream:
        line = line.rstrip("\n")
        if not line:
            continue
        level, message = "INFO", line
        if structured:
            try:
                record = json.loads(line)
                level, message = record["level"], record["message"]
            except (ValueError, KeyError, TypeError):
                level = "WARNING"
        on_log(level, message[:4000])
