"""Live progress of an experiment: a rich display on a terminal, plain log lines otherwise.

The Experiment reports events (`start`, `waiting_for_nodes`, `round_started`, `node_answered`,
`round_finished`, `round_failed`, `stop`); a reporter shows rounds done, who is connected
while the run waits, nodes answered in the current round, each node's training loss, the
time since the run started and an ETA from the mean duration of the rounds run so far.
Every loss shown is a training loss: a node's mean over its local steps, and the round's
sample-weighted mean over nodes ("mean train loss", the same number as in the summary).
"""

from __future__ import annotations

import logging
import sys
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from researcher.history import RoundRecord


class _Node(Protocol):
    """What the display needs of a connected node."""

    @property
    def node_id(self) -> str: ...
    @property
    def label(self) -> str: ...


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


def _fmt_privacy(record: RoundRecord) -> str:
    """ ", node-level DP ε=... (δ=...)" after a round under node-level DP, ", DP ε ≤ ..."
    under record-level DP, else ""."""
    if record.node_dp is None:
        return _fmt_dp(record)
    dp = record.node_dp
    return f", node-level DP ε={dp.epsilon:.3g} (δ={dp.delta:g})" + _fmt_dp(record)


def _fmt_loss(loss: float | None) -> str:
    return "n/a" if loss is None else f"{loss:.4f}"


def _fmt_dp(record: RoundRecord) -> str:
    """ ", DP ε ≤ x" under record-level DP: the most any node has spent so far."""
    spent = record.max_dp_epsilon
    return "" if spent is None else f", DP ε ≤ {spent:.3f}"


#: Status words of a node in the current round; the last three are final.
TRAINING, ANSWERED, FAILED, NO_ANSWER = "training", "answered", "failed", "no answer"

#: What nodes still training become when the run ends otherwise than by their answer.
_UNANSWERED_BY_OUTCOME = {
    "interrupted": "interrupted",
    "stopped": "stopped",
    "failed": NO_ANSWER,
    "done": NO_ANSWER,
}

#: Log lines kept in the live display's log panel (the full log is in the run's run.log).
LOG_PANEL_LINES = 6


@dataclass
class _NodeStatus:
    label: str
    state: str = TRAINING
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
    started_at: float = 0.0
    round_started_at: float = 0.0
    durations: list[float] = field(default_factory=list)
    nodes: dict[str, _NodeStatus] = field(default_factory=dict)
    last_loss: float | None = None
    last_loss_round: int | None = None
    waiting: str = ""
    outcome: str = ""

    def eta(self) -> float | None:
        """Seconds left: mean round duration so far times the rounds still to run."""
        if not self.durations or self.outcome:
            return None
        mean = sum(self.durations) / len(self.durations)
        in_progress = self.current >= self.first_round + self.rounds_done
        after_current = max(self.last_round - self.current, 0)
        if in_progress:
            elapsed = time.monotonic() - self.round_started_at
            return max(mean - elapsed, 0.0) + mean * after_current
        return mean * after_current

    def elapsed(self) -> float | None:
        """Seconds since the run started (not since the round started)."""
        return time.monotonic() - self.started_at if self.started_at else None


def waiting_text(
    connected: Sequence[_Node],
    eligible: Sequence[_Node],
    needed: int,
    wanted: Sequence[str] | None,
) -> str:
    """'waiting for nodes: 2 of 3 connected (alpha, beta); missing: node-3; ...'."""
    ready = ", ".join(n.label for n in eligible)
    parts = [
        f"waiting for nodes: {len(eligible)} of {needed} connected"
        + (f" ({ready})" if ready else "")
    ]
    connected_ids = {n.node_id for n in connected}
    if wanted is not None:
        missing = [node_id for node_id in wanted if node_id not in connected_ids]
        if missing:
            parts.append("missing: " + ", ".join(missing))
    eligible_ids = {n.node_id for n in eligible}
    unmatched = [n.label for n in connected if n.node_id not in eligible_ids]
    if unmatched:
        parts.append("connected without a matching dataset: " + ", ".join(unmatched))
    return "; ".join(parts)


class ProgressReporter:
    """Receives the experiment's events; subclasses decide how to show them."""

    def __init__(self) -> None:
        self.state = _RunState()

    def start(self, experiment_id: str, first_round: int, last_round: int) -> None:
        self.state = _RunState(
            experiment_id=experiment_id,
            first_round=first_round,
            last_round=last_round,
            started_at=time.monotonic(),
        )

    def waiting_for_nodes(
        self,
        connected: Sequence[_Node],
        eligible: Sequence[_Node],
        needed: int,
        wanted: Sequence[str] | None,
    ) -> None:
        """The run waits for `needed` eligible nodes; `wanted`: the node ids it asked for, if any."""
        self.state.waiting = waiting_text(connected, eligible, needed, wanted)

    def round_started(self, round_number: int, nodes: Mapping[str, str]) -> None:
        """`nodes`: node id -> label of the nodes selected for this round."""
        self.state.waiting = ""
        self.state.current = round_number
        self.state.round_started_at = time.monotonic()
        self.state.nodes = {node_id: _NodeStatus(label) for node_id, label in nodes.items()}

    def node_answered(
        self, round_number: int, node_id: str, loss: float | None, n_samples: int
    ) -> None:
        status = self.state.nodes.setdefault(node_id, _NodeStatus(node_id))
        status.state, status.loss, status.n_samples = ANSWERED, loss, n_samples

    def round_finished(self, record: RoundRecord) -> None:
        for node_id, reason in record.failures.items():
            status = self.state.nodes.setdefault(node_id, _NodeStatus(node_id))
            status.state, status.detail = FAILED, reason.splitlines()[0] if reason else ""
        self.state.rounds_done += 1
        self.state.durations.append(record.seconds)
        self.state.last_loss = record.mean_loss
        self.state.last_loss_round = record.round

    def round_failed(self, round_number: int, reason: str) -> None:
        """The round could not be aggregated; the experiment stops."""
        self._settle_nodes(NO_ANSWER)

    def stop(self, outcome: str = "done") -> None:
        """The run ended: `done`, `stopped`, `failed` or `interrupted`; no node stays "training"."""
        self.state.outcome = outcome
        self.state.waiting = ""
        self._settle_nodes(_UNANSWERED_BY_OUTCOME.get(outcome, NO_ANSWER))

    def _settle_nodes(self, final: str) -> None:
        for status in self.state.nodes.values():
            if status.state == TRAINING:
                status.state = final

    def __enter__(self) -> ProgressReporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop("done" if exc[0] is None else "failed")


class LogProgress(ProgressReporter):
    """One log line per answer and per round, for logs, CI and non-terminal output."""

    def start(self, experiment_id: str, first_round: int, last_round: int) -> None:
        super().start(experiment_id, first_round, last_round)
        log.info("experiment %s: rounds %d to %d", experiment_id, first_round, last_round)

    def waiting_for_nodes(
        self,
        connected: Sequence[_Node],
        eligible: Sequence[_Node],
        needed: int,
        wanted: Sequence[str] | None,
    ) -> None:
        before = self.state.waiting
        super().waiting_for_nodes(connected, eligible, needed, wanted)
        if self.state.waiting != before:
            log.info("%s", self.state.waiting)

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
        answered = sum(1 for s in self.state.nodes.values() if s.state == ANSWERED)
        log.info(
            "round %d: %s answered (%d/%d), %d samples, train loss %s",
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
            "round %d/%d done: %d/%d node(s) answered, mean train loss %s%s, %s, ETA %s",
            record.round,
            self.state.last_round,
            len(record.nodes),
            len(record.nodes) + len(record.failures),
            _fmt_loss(record.mean_loss),
            _fmt_privacy(record),
            format_duration(record.seconds),
            format_duration(self.state.eta()),
        )

    def round_failed(self, round_number: int, reason: str) -> None:
        super().round_failed(round_number, reason)
        log.error("round %d failed: %s", round_number, reason)


class _PanelLogHandler(logging.Handler):
    """Keeps the latest log lines for the live display's log panel."""

    def __init__(self, lines: deque[str]) -> None:
        super().__init__(logging.INFO)
        self.lines = lines
        self.setFormatter(logging.Formatter("%(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record).splitlines()[0])
        except Exception:  # a log line must never break the run
            self.handleError(record)


def _is_terminal_handler(handler: logging.Handler) -> bool:
    """A handler writing to the terminal (rich's, or a stream on stderr/stdout), not a file."""
    if isinstance(handler, logging.FileHandler):
        return False
    if type(handler).__name__ == "RichHandler":
        return True
    stream = getattr(handler, "stream", None)
    return stream in (sys.stderr, sys.stdout)


class RichProgress(ProgressReporter):
    """A live panel: a bar of rounds, the current round's nodes, and the latest log lines.

    While it shows, log lines go to its log panel (and to run.log) instead of scrolling over it.
    """

    def __init__(self, console: Any = None) -> None:
        super().__init__()
        from rich.console import Console
        from rich.live import Live
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self._console: Console = console if console is not None else _shared_console()
        self._bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=None),
            MofNCompleteColumn(),
            console=self._console,
            expand=False,
        )
        self._task: Any = None
        self._log_lines: deque[str] = deque(maxlen=LOG_PANEL_LINES)
        self._log_handler = _PanelLogHandler(self._log_lines)
        self._muted: list[logging.Handler] = []
        self._live = Live(
            console=self._console,
            refresh_per_second=REFRESH_PER_SECOND,
            get_renderable=self.render,
            transient=False,
        )
        self._started = False

    def start(self, experiment_id: str, first_round: int, last_round: int) -> None:
        super().start(experiment_id, first_round, last_round)
        total = last_round - first_round + 1
        self._task = self._bar.add_task(f"rounds of {experiment_id}", total=total)
        if not self._started:
            self._capture_logs()
            self._live.start()
            self._started = True

    def round_finished(self, record: RoundRecord) -> None:
        super().round_finished(record)
        if self._task is not None:
            self._bar.update(self._task, completed=self.state.rounds_done)
        failed = f", {len(record.failures)} failed" if record.failures else ""
        self._console.print(
            f"round {record.round}: {len(record.nodes)}/{len(record.nodes) + len(record.failures)} "
            f"answered{failed}, mean train loss {_fmt_loss(record.mean_loss)}"
            f"{_fmt_privacy(record)}, "
            f"{format_duration(record.seconds)}",
            markup=False,
            highlight=False,
        )

    def round_failed(self, round_number: int, reason: str) -> None:
        super().round_failed(round_number, reason)
        self._console.print(f"round {round_number} failed: {reason}", markup=False, style="red")

    def stop(self, outcome: str = "done") -> None:
        super().stop(outcome)
        if self._started:
            self._live.stop()  # draws the final frame, with the settled statuses
            self._release_logs()
            self._started = False

    def _capture_logs(self) -> None:
        root = logging.getLogger()
        self._muted = [h for h in root.handlers if _is_terminal_handler(h)]
        for handler in self._muted:
            root.removeHandler(handler)
        root.addHandler(self._log_handler)

    def _release_logs(self) -> None:
        root = logging.getLogger()
        root.removeHandler(self._log_handler)
        for handler in self._muted:
            root.addHandler(handler)
        self._muted = []

    def render(self) -> Any:
        """The frame the live display shows now."""
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        state = self.state
        loss_round = f"round {state.last_loss_round} " if state.last_loss_round else ""
        status = state.outcome or (f"round {state.current}" if state.current else "starting")
        info = Text(
            f"{status} | elapsed {format_duration(state.elapsed())} | "
            f"{loss_round}mean train loss {_fmt_loss(state.last_loss)} | "
            f"ETA {format_duration(state.eta())}",
            no_wrap=False,
        )
        parts: list[Any] = [self._bar, info]
        if state.waiting:
            parts.append(Text(state.waiting, style="yellow"))
        if state.nodes:
            table = Table(box=None, pad_edge=False, show_edge=False)
            table.add_column("node", overflow="fold")
            table.add_column("status", overflow="ellipsis", no_wrap=True, ratio=1)
            table.add_column("samples", justify="right", no_wrap=True)
            table.add_column("train loss", justify="right", no_wrap=True)
            styles = {TRAINING: "yellow", ANSWERED: "green", FAILED: "red"}
            for node in state.nodes.values():
                shown = node.state if not node.detail else f"{node.state}: {node.detail}"
                table.add_row(
                    node.label,
                    Text(shown, style=styles.get(node.state, "")),
                    "" if node.n_samples is None else str(node.n_samples),
                    _fmt_loss(node.loss) if node.state == ANSWERED else "",
                )
            parts.append(table)
        if self._log_lines:
            parts.append(Text("log (all lines in the run folder's run.log):", style="dim"))
            parts.extend(
                Text(line, style="dim", no_wrap=True, overflow="ellipsis")
                for line in self._log_lines
            )
        return Group(*parts)


def _shared_console() -> Any:
    """A console on stderr: stdout stays for results (the summary, `--format json`)."""
    from rich.console import Console

    return Console(stderr=True)


def make_progress(interactive: bool | None = None) -> ProgressReporter:
    """A live display when stderr is a terminal, log lines otherwise."""
    if interactive is None:
        interactive = sys.stderr.isatty()
    return RichProgress() if interactive else LogProgress()
