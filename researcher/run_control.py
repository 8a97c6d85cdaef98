"""The run folder as a control surface: `researcher ls | logs | stop` from another shell.

A running experiment keeps three files in its folder, next to metrics.jsonl and checkpoints:

- `run.json`: the run's state (running, done, stopped, failed, interrupted), its process,
  the rounds planned and completed, the last mean training loss; rewritten atomically at
  start, after every round and at the end.
- `run.log`: every log line of the run, appended as it happens (`logs --follow` tails it).
- `stop-request.json`: written by `fedloom researcher stop`; the run checks for it after each
  round's checkpoint and ends there, as `stopped`.

Files rather than a control socket: the folder already holds the run's truth (checkpoints,
metrics), it outlives the process (`ls` still shows a crashed or finished run), it needs no
listening port, no authentication beyond file permissions, and it works on a shared disk.
The engine uses only `RunControl`: `started`, `round_done`, `stop_requested`, `finished`.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

from common.errors import ConfigurationError

__all__ = [
    "FINAL_STATES",
    "LOG_FILE",
    "STATE_FILE",
    "STOP_FILE",
    "RunControl",
    "RunStatus",
    "find_run",
    "follow_log",
    "list_runs",
    "read_status",
    "request_stop",
    "runs_started_here",
]

log = logging.getLogger(__name__)

STATE_FILE = "run.json"
LOG_FILE = "run.log"
STOP_FILE = "stop-request.json"

RUNNING = "running"
#: States a run ends in; `died` is what `ls` shows for a `running` run whose process is gone.
FINAL_STATES = ("done", "stopped", "failed", "interrupted")
DIED = "died"

#: Seconds between two looks at run.log and run.json while following: a human-speed tail.
FOLLOW_POLL_SECONDS = 0.25

_started_here: list[Path] = []


@dataclass(frozen=True)
class RunStatus:
    """What run.json says about one run, with its liveness checked on this host."""

    folder: Path
    experiment_id: str
    state: str
    pid: int
    host: str
    started_at: float
    updated_at: float
    first_round: int
    last_round: int
    rounds_done: int
    last_loss: float | None
    error: str = ""

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def is_running(self) -> bool:
        return self.state == RUNNING

    @property
    def seconds(self) -> float:
        """Wall time from start to the last update (to now while running)."""
        end = time.time() if self.is_running else self.updated_at
        return max(end - self.started_at, 0.0)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["folder"] = str(self.folder)
        data["name"] = self.name
        data["seconds"] = self.seconds
        return data


class RunControl:
    """The engine's side of the protocol for one experiment folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._status: dict[str, Any] = {}
        self._log_handler: logging.Handler | None = None

    def started(self, experiment_id: str, first_round: int, last_round: int) -> None:
        """A run begins: state `running`, a fresh stop request slate, logs copied to run.log."""
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / STOP_FILE).unlink(missing_ok=True)
        now = time.time()
        self._status = {
            "experiment_id": experiment_id,
            "state": RUNNING,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_at": now,
            "updated_at": now,
            "first_round": first_round,
            "last_round": last_round,
            "rounds_done": first_round - 1,
            "last_loss": None,
            "error": "",
        }
        self._write()
        handler = logging.FileHandler(self.folder / LOG_FILE, encoding="utf-8")
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        )
        logging.getLogger().addHandler(handler)
        self._log_handler = handler
        _started_here.append(self.folder)

    def round_done(self, round_number: int, mean_loss: float | None) -> None:
        """A round is committed and checkpointed."""
        self._status.update(rounds_done=round_number, last_loss=mean_loss)
        self._write()

    def stop_requested(self) -> bool:
        """Whether `fedloom researcher stop` asked this run to end after its current round."""
        return (self.folder / STOP_FILE).exists()

    def finished(self, state: str, error: str = "") -> None:
        """The run ended in `state` (one of FINAL_STATES)."""
        if state not in FINAL_STATES:
            raise ValueError(f"unknown final state {state!r}: expected one of {FINAL_STATES}")
        if not self._status:
            return
        self._status.update(state=state, error=error)
        self._write()
        (self.folder / STOP_FILE).unlink(missing_ok=True)
        if self._log_handler is not None:
            logging.getLogger().removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None

    def _write(self) -> None:
        self._status["updated_at"] = time.time()
        _write_json_atomically(self.folder / STATE_FILE, self._status)


def _write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    tmp.replace(path)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: it exists
    return True


def read_status(folder: Path) -> RunStatus | None:
    """The run's status from `folder/run.json`, or None when the folder holds no such file.

    A `running` run whose process no longer exists on this host reads as `died`.
    """
    path = Path(folder) / STATE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"{path} is unreadable ({exc}): delete it or the folder") from exc
    state = str(data.get("state", "unknown"))
    pid = int(data.get("pid", 0))
    host = str(data.get("host", ""))
    if state == RUNNING and host == socket.gethostname() and not _process_alive(pid):
        state = DIED
    return RunStatus(
        folder=Path(folder),
        experiment_id=str(data.get("experiment_id", "")),
        state=state,
        pid=pid,
        host=host,
        started_at=float(data.get("started_at", 0.0)),
        updated_at=float(data.get("updated_at", 0.0)),
        first_round=int(data.get("first_round", 0)),
        last_round=int(data.get("last_round", 0)),
        rounds_done=int(data.get("rounds_done", 0)),
        last_loss=data.get("last_loss"),
        error=str(data.get("error", "")),
    )


def list_runs(out_dir: Path) -> list[RunStatus]:
    """Every run under `out_dir` that has a run.json, oldest start first."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    runs = [read_status(p.parent) for p in out_dir.glob(f"*/{STATE_FILE}")]
    return sorted((r for r in runs if r is not None), key=lambda r: r.started_at)


def find_run(out_dir: Path, run: str) -> Path:
    """The folder of RUN: a folder name under `out_dir`, or a path to a run folder."""
    candidates = [Path(out_dir) / run, Path(run)]
    for folder in candidates:
        if (folder / STATE_FILE).is_file():
            return folder
    known = ", ".join(r.name for r in list_runs(out_dir)) or "none"
    raise ConfigurationError(
        f"no run {run!r} under {out_dir} (runs there: {known}); pass a run name from "
        "`fedloom researcher ls`, its folder, or --out DIR where the runs are"
    )


def request_stop(folder: Path) -> RunStatus:
    """Ask the run in `folder` to stop after its current round's checkpoint."""
    status = read_status(folder)
    if status is None:
        raise ConfigurationError(f"{folder} holds no {STATE_FILE}: it is not a run folder")
    if status.state == DIED:
        raise ConfigurationError(
            f"run {status.name} is not running: its process {status.pid} is gone (killed or "
            "crashed); resume it with `fedloom researcher run ... --resume`"
        )
    if not status.is_running:
        raise ConfigurationError(f"run {status.name} is not running: it is {status.state}")
    _write_json_atomically(
        Path(folder) / STOP_FILE,
        {"requested_at": time.time(), "pid": os.getpid(), "host": socket.gethostname()},
    )
    return status


def runs_started_here() -> list[Path]:
    """Folders of the runs this process started, in order (for `run --format json`)."""
    return list(_started_here)


def follow_log(folder: Path, out: TextIO, *, follow: bool) -> None:
    """Copy run.log to `out`; with `follow`, keep copying until the run is no longer running."""
    path = Path(folder) / LOG_FILE
    for chunk in _log_chunks(path, folder, follow):
        out.write(chunk)
        out.flush()


def _log_chunks(path: Path, folder: Path, follow: bool) -> Iterator[str]:
    position = 0
    while True:
        status = read_status(folder)  # read before the log, so no final line is missed
        if path.exists():
            with open(path, encoding="utf-8", errors="replace") as fh:
                fh.seek(position)
                chunk = fh.read()
                position = fh.tell()
            if chunk:
                yield chunk
        if not follow or status is None or not status.is_running:
            return
        time.sleep(FOLLOW_POLL_SECONDS)
