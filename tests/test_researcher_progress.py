"""Live progress: a rich panel on terminals, one log line per event elsewhere."""

from __future__ import annotations

import io
import logging
import re
import sys
import time

import pytest
from rich.console import Console

from researcher.history import NodeRoundRecord, RoundRecord
from researcher.progress import LogProgress, RichProgress, format_duration, make_progress


def _record(
    round_number: int, seconds: float, failures: dict[str, str] | None = None
) -> RoundRecord:
    return RoundRecord(
        round=round_number,
        nodes=[
            NodeRoundRecord(round_number, "n1", "alpha", 100, 0.5, {}, 0.2, 5),
            NodeRoundRecord(round_number, "n2", "beta", 300, 0.3, {}, 0.2, 5),
        ],
        failures=failures or {},
        seconds=seconds,
    )


def _drive(progress, first: int = 1, last: int = 4) -> None:  # type: ignore[no-untyped-def]
    progress.start("exp-1", first, last)
    progress.round_started(1, {"n1": "alpha", "n2": "beta", "n3": "gamma"})
    progress.node_answered(1, "n1", 0.5, 100)
    progress.node_answered(1, "n2", 0.3, 300)
    progress.round_finished(
        _record(1, 2.0, {"n3": "still training when the round deadline passed"})
    )


def test_log_lines_name_nodes_losses_answers_and_eta(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="researcher.progress")
    _drive(LogProgress())
    text = caplog.text
    assert "round 1/4: training on 3 node(s): alpha, beta, gamma" in text
    assert "round 1: alpha answered (1/3), 100 samples, train loss 0.5000" in text
    assert "round 1: beta answered (2/3), 300 samples, train loss 0.3000" in text
    # weighted mean (0.5*100 + 0.3*300) / 400 = 0.35; 3 rounds left at 2 s each
    assert "round 1/4 done: 2/3 node(s) answered, mean train loss 0.3500, 2.0s, ETA 6.0s" in text


def _terminal(width: int) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, width=width, color_system=None), out


def _frame(progress: RichProgress, width: int) -> str:
    """The frame the live display shows now, rendered alone at `width` columns."""
    console, out = _terminal(width)
    console.print(progress.render())
    return out.getvalue()


@pytest.mark.parametrize("width", [80, 120])
def test_rich_panel_shows_rounds_nodes_losses_failures_and_eta(width: int) -> None:
    console, out = _terminal(width)
    progress = RichProgress(console=console)
    try:
        _drive(progress)
        progress.round_started(2, {"n1": "alpha", "n2": "beta"})
        progress.node_answered(2, "n1", 0.25, 100)
        console.print(progress.render())  # the frame the live display is showing now
    finally:
        progress.stop()
    text = out.getvalue()
    assert "round 1: 2/3 answered, 1 failed, mean train loss 0.3500, 2.0s" in text
    assert "1/4" in text  # rounds done of the bar
    frame = text.split("round 1: 2/3 answered")[-1]
    assert "round 1 mean train loss 0.3500" in frame  # the loss says which round it is of
    assert "alpha" in frame and "answered" in frame and "0.2500" in frame
    assert "beta" in frame and "training" in frame
    assert "ETA" in frame
    visible = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "\n", text)  # cursor moves of the live display
    assert all(len(line) <= width for line in visible.splitlines())


def test_elapsed_counts_from_the_start_of_the_run_not_of_the_round() -> None:
    console, out = _terminal(120)
    progress = RichProgress(console=console)
    try:
        progress.start("exp", 1, 3)
        progress.state.started_at = time.monotonic() - 125.0
        progress.round_started(1, {"n": "north"})
        console.print(progress.render())
    finally:
        progress.stop()
    frame = out.getvalue().split("round 1 |")[-1]
    assert "elapsed 2m05s" in frame


@pytest.mark.parametrize(
    ("outcome", "shown"), [("interrupted", "interrupted"), ("failed", "no answer")]
)
def test_nodes_still_training_get_a_final_status_when_the_run_ends(
    outcome: str, shown: str
) -> None:
    console, out = _terminal(80)
    progress = RichProgress(console=console)
    progress.start("exp", 1, 3)
    progress.round_started(1, {"n1": "north", "n2": "south"})
    progress.node_answered(1, "n1", 0.4, 10)
    progress.stop(outcome)
    console.print(progress.render())
    final = out.getvalue().split(f"{outcome} | elapsed")[-1]
    assert "training" not in final.replace("train loss", "")
    south = next(line for line in final.splitlines() if line.startswith("south"))
    assert shown in south
    assert "ETA ?" in final


def test_a_failed_round_leaves_no_node_training(caplog: pytest.LogCaptureFixture) -> None:
    progress = LogProgress()
    progress.start("exp", 1, 3)
    progress.round_started(1, {"n1": "north"})
    progress.round_failed(1, "only 0 of 1 node(s) answered")
    assert progress.state.nodes["n1"].state == "no answer"


def test_log_lines_go_to_the_panel_not_over_the_bar() -> None:
    console, out = _terminal(80)
    terminal = logging.StreamHandler(io.StringIO())
    terminal.stream = sys.stderr  # what setup_logging installs off a terminal
    root = logging.getLogger()
    root.addHandler(terminal)
    previous_level = root.level
    root.setLevel(logging.INFO)
    progress = RichProgress(console=console)
    try:
        progress.start("exp", 1, 2)
        assert terminal not in root.handlers  # muted while the display shows
        logging.getLogger("researcher.node_directory").warning("node gamma disconnected: gone")
        console.print(progress.render())
    finally:
        progress.stop()
        root.removeHandler(terminal)
        root.setLevel(previous_level)
    panel = out.getvalue()
    assert "WARNING node gamma disconnected: gone" in panel
    assert "run.log" in panel


def test_waiting_shows_who_is_connected_and_who_is_missing() -> None:
    from researcher.node_directory import ConnectedNode, DatasetSummary

    def node(node_id: str, name: str, tags: tuple[str, ...]) -> ConnectedNode:
        dataset = DatasetSummary("d", tags, 10, (10, 2), "csv")
        return ConnectedNode(node_id, name, (dataset,), b"", "peer")

    alpha, beta, other = (
        node("n1", "alpha", ("#a",)),
        node("n2", "beta", ("#a",)),
        node("n4", "zeta", ("#b",)),
    )
    console, _ = _terminal(120)
    progress = RichProgress(console=console)
    try:
        progress.start("exp", 1, 2)
        progress.waiting_for_nodes([alpha, beta, other], [alpha, beta], 3, ["n1", "n2", "n3"])
        first = _frame(progress, 120)
        progress.round_started(1, {"n1": "alpha"})
        second = _frame(progress, 120)
    finally:
        progress.stop()
    first = " ".join(first.split())  # the line may wrap at 120 columns
    assert "waiting for nodes: 2 of 3 connected (alpha (n1), beta (n2))" in first
    assert "; missing: n3;" in first
    assert "connected without a matching dataset: zeta (n4)" in first
    assert "waiting for nodes" not in second  # gone once the round starts


def test_eta_counts_down_inside_a_round() -> None:
    progress = LogProgress()
    progress.start("exp", 1, 3)
    progress.round_started(1, {"n": "n"})
    progress.round_finished(_record(1, 10.0))
    progress.round_started(2, {"n": "n"})
    progress.state.round_started_at = time.monotonic() - 4.0
    eta = progress.state.eta()
    assert eta is not None and 15.5 < eta <= 16.0  # 6 s left of round 2, then 10 s for round 3


def test_non_terminal_output_gets_log_lines() -> None:
    assert isinstance(make_progress(interactive=False), LogProgress)
    assert isinstance(make_progress(), LogProgress)  # pytest's stderr is not a terminal


@pytest.mark.parametrize(
    ("seconds", "text"), [(None, "?"), (3.21, "3.2s"), (185, "3m05s"), (3720, "1h02m")]
)
def test_durations_read_naturally(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text
