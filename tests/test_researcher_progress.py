"""Live progress: a rich panel on terminals, one log line per event elsewhere."""

from __future__ import annotations

import io
import logging
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
    assert "round 1: alpha answered (1/3), 100 samples, loss 0.5000" in text
    assert "round 1: beta answered (2/3), 300 samples, loss 0.3000" in text
    # weighted mean (0.5*100 + 0.3*300) / 400 = 0.35; 3 rounds left at 2 s each
    assert "round 1/4 done: 2/3 node(s) answered, mean training loss 0.3500, 2.0s, ETA 6.0s" in text


def test_rich_panel_shows_rounds_nodes_losses_failures_and_eta() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=160, color_system=None)
    progress = RichProgress(console=console)
    try:
        _drive(progress)
        progress.round_started(2, {"n1": "alpha", "n2": "beta"})
        progress.node_answered(2, "n1", 0.25, 100)
        console.print(progress._render())  # the frame the live display is showing now
    finally:
        progress.stop()
    text = out.getvalue()
    assert "round 1: 2/3 answered, 1 failed, mean loss 0.3500, 2.0s" in text
    assert "1/4" in text  # rounds done of the bar
    frame = text.split("round 1: 2/3 answered")[-1]
    assert "alpha" in frame and "answered" in frame and "0.2500" in frame
    assert "beta" in frame and "training" in frame
    assert "ETA" in frame


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
