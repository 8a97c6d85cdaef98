"""Live progress of an experiment: a rich display on a terminal, plain log lines otherwise.

The Experiment reports events (`start`, `round_started`, `node_answered`, `round_finished`,
`stop`); a reporter shows rounds done, nodes answered in the current round, each node's
loss, round time and an ETA from the mean duration of the rounds run so far.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from researcher.history import RoundRecord

__all__ = ["LogProgress", "ProgressReporter", "RichProgress", "make_progress"]

log = logging.getLogger(__name__)

#: Redraws per second of the live display: smooth enough for a clock, cheap on CPU.
REFRESH_PER_SECOND = 4


def format_duration(seconds: float | None) -> str:
    """'1h02m', '3m05s', '12.3s', or '?' when unknown."""
    if seconds is None:
        return "?"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _fmt_loss(loss: float | None) -> str:
    return "n/a" if loss is None else f"{loss:.4f}"


@dataclass
class _NodeStatus:
    label: str
    state: str = "training"
    loss: float | None = None
    n_samples: int | None = None
    detail: str = ""


@dataclass
class _RunState:
    """What every reporter tracks: round numbers, timings and the current round's nodes."""

    experiment_id: str = ""
    first_round: int = 1
    last_round: int = 1
    current: int = 0
    rounds_done: int = 0
    round_started_at: float = 0.0
    durations: list[float] = field(default_factory=list)
    nodes: dict[str, _NodeStatus] = field(default_factory=dict)
    last_loss: float | None = None

    def eta(self) -> float | None:
        """Seconds left: mean round duration so far times the rounds still to run."""
        if not self.durations:
            return None
        mean = sum(self.durations) / len(self.durations)
        in_progress = self.current >= self.first_round + self.rounds_done
        after_current = max(self.last_round - self.current, 0)
        if in_progress:
            elapsed = time.monotonic() - self.round_started_at
            return max(mean - elapsed, 0.0) + mean * after_current
        return mean * after_current


class ProgressReporter:
    """Receives the experiment's events; subclasses decide how to show them."""

    def __init__(self) -> None:
        self.state = _RunState()

    def start(self, experiment_id: str, first_round: int, last_round: int) -> None:
        self.state = _RunState(
            experiment_id=experiment_id, first_round=first_round, last_round=last_round
        )

    def round_started(self, round_number: int, nodes: Mapping[str, str]) -> None:
        """`nodes`: node id -> label of the nodes selected for this round."""
        self.state.current = round_number
        self.state.round_started_at = time.monotonic()
        self.state.nodes = {node_id: _NodeStatus(label) for node_id, label in nodes.items()}

    def node_answered(
        self, round_number: int, node_id: str, loss: float | None, n_samples: int
    ) -> None:
        status = self.state.nodes.setdefault(node_id, _NodeStatus(node_id))
        status.state, status.loss, status.n_samples = "answered", loss, n_samples

    def round_finished(self, record: RoundRecord) -> None:
        for node_id, reason in record.failures.items():
            status = self.state.nodes.setdefault(node_id, _NodeStatus(node_id))
            status.state, status.detail = "failed", reason.splitlines()[0] if reason else ""
        self.state.rounds_done += 1
        self.state.durations.append(record.seconds)
        self.state.last_loss = record.mean_loss

    def round_failed(self, round_number: int, reason: str) -> None:
        """The round could not be aggregated; the experiment stops."""

    def stop(self) -> None:
        """The run ended (done, failed or interrupted)."""

    def __enter__(self) -> ProgressReporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class LogProgress(ProgressReporter):
    """One log line per answer and per round, for logs, CI and non-terminal output."""

    def start(self, experiment_id: str, first_round: int, last_round: int) -> None:
        super().start(experiment_id, first_round, last_round)
        log.info("experiment %s: rounds %d to %d", experiment_id, first_round, last_round)

    def round_started(self, round_number: int, nodes: Mapping[str, str]) -> None:
        super().round_started(round_number, nodes)
        log.info(
            "round %d/%d: training on %d node(s): %s",
            round_number,
            self.state.last_round,
            len(nodes),
            ", ".join(nodes.values()),
        )

    def node_answered(
        self, round_number: int, node_id: str, loss: float | None, n_samples: int
    ) -> None:
        super().node_answered(round_number, node_id, loss, n_samples)
        answered = sum(1 for s in self.state.nodes.values() if s.state == "answered")
        log.info(
            "round %d: %s answered (%d/%d), %d samples, loss %s",
            round_number,
            self.state.nodes[node_id].label,
            answered,
            len(self.state.nodes),
            n_samples,
            _fmt_loss(loss),
        )

    def round_finished(self, record: RoundRecord) -> None:
        super().round_finished(record)
        log.info(
            "round %d/%d done: %d/%d node(s) answered, mean training loss %s, %s, ETA %s",
            record.round,
            self.state.last_round,
            len(record.nodes),
            len(record.nodes) + len(record.failures),
            _fmt_loss(record.mean_loss),
            format_duration(record.seconds),
            format_duration(self.state.eta()),
        )

    def round_failed(self, round_number: int, reason: str) -> None:
        log.error("round %d failed: %s", round_number, reason)


class RichProgress(ProgressReporter):
    """A live panel: a bar of rounds with ETA and a table of the current round's nodes."""

    def __init__(self, console: Any = None) -> None:
        super().__init__()
        from rich.console import Console, Group
        from rich.live import Live
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self._group_cls = Group
        self._console: Console = console if console is not None else _shared_console()
        self._bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            console=self._console,
        )
        self._task: Any = None
        self._live = Live(
            console=self._console,
            refresh_per_second=REFRESH_PER_SECOND,
            get_renderable=self._render,
            transient=False,
        )
        self._started = False

    def start(self, experiment_id: str, first_round: int, last_round: int) -> None:
        super().start(experiment_id, first_round, last_round)
        total = last_round - first_round + 1
        self._task = self._bar.add_task(f"rounds of {experiment_id}", total=total, info="")
        if not self._started:
            self._live.start()
            self._started = True

    def round_finished(self, record: RoundRecord) -> None:
        super().round_finished(record)
        if self._task is not None:
            self._bar.update(self._task, completed=self.state.rounds_done)
        failed = f", [red]{len(record.failures)} failed[/red]" if record.failures else ""
        self._console.print(
            f"round {record.round}: {len(record.nodes)}/{len(record.nodes) + len(record.failures)} "
            f"answered{failed}, mean loss {_fmt_loss(record.mean_loss)}, "
            f"{format_duration(record.seconds)}"
        )

    def round_failed(self, round_number: int, reason: str) -> None:
        self._console.print(f"[red]round {round_number} failed:[/red] {reason}")

    def stop(self) -> None:
        if self._started:
            self._live.stop()
            self._started = False

    def _render(self) -> Any:
        from rich.table import Table

        state = self.state
        if self._task is not None:
            info = (
                f"round {state.current}  elapsed {format_duration(_elapsed(state))}  "
                f"last loss {_fmt_loss(state.last_loss)}  ETA {format_duration(state.eta())}"
            )
            self._bar.update(self._task, info=info)
        table = Table(box=None, pad_edge=False, show_edge=False)
        for column in ("node", "status", "samples", "loss"):
            table.add_column(column)
        styles = {"training": "yellow", "answered": "green", "failed": "red"}
        for status in state.nodes.values():
            shown = status.state if not status.detail else f"{status.state}: {status.detail[:60]}"
            table.add_row(
                status.label,
                f"[{styles.get(status.state, 'white')}]{shown}",
                "" if status.n_samples is None else str(status.n_samples),
                _fmt_loss(status.loss) if status.state == "answered" else "",
            )
        return self._group_cls(self._bar, table)


def _elapsed(state: _RunState) -> float | None:
    return time.monotonic() - state.round_started_at if state.round_started_at else None


def _shared_console() -> Any:
    """The console rich's logging handler writes to, so log lines print above the panel."""
    from rich import get_console

    return get_console()


def make_progress(interactive: bool | None = None) -> ProgressReporter:
    """A live display when stderr is a terminal, log lines otherwise."""
    if interactive is None:
        interactive = sys.stderr.isatty()
    return RichProgress() if interactive else LogProgress()
