"""`fedloom researcher report DIR`: the PNG decodes and the summary matches metrics.jsonl."""

from __future__ import annotations

import io
import json
import os
import subprocess
from pathlib import Path

import matplotlib.image
import pytest
from rich.console import Console

from researcher.history import MetricsLog, NodeRoundRecord, RoundRecord
from researcher.report import RoundSummary, print_summary
from tests.conftest import ROOT, fedloom_cmd


def _metrics(folder: Path) -> Path:
    log = MetricsLog(folder / "metrics.jsonl")
    for rnd in (1, 2, 3):
        nodes = [
            NodeRoundRecord(
                rnd,
                "n1",
                "alpha",
                100,
                0.9 / rnd,
                {"local_accuracy": 0.5 + 0.1 * rnd, "local_f1": 0.4 + 0.1 * rnd},
                0.1,
                4,
            ),
            NodeRoundRecord(
                rnd,
                "n2",
                "beta",
                300,
                0.6 / rnd,
                {"local_accuracy": 0.6 + 0.05 * rnd, "local_f1": 0.5},
                0.3,
                4,
            ),
        ]
        failures = {"n3": "no heartbeat for 11 s"} if rnd == 2 else {}
        if rnd == 3:
            nodes = nodes[1:]  # alpha left
        log.append(RoundRecord(round=rnd, nodes=nodes, failures=failures, seconds=1.5 * rnd))
    return log.path


def _expected_from_jsonl(path: Path) -> dict[int, dict[str, float]]:
    """Recompute each round's numbers straight from the file's rows."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    out: dict[int, dict[str, float]] = {}
    for rnd in sorted({r["round"] for r in rows}):
        answered = [r for r in rows if r["round"] == rnd and "failed" not in r]
        total = sum(r["n_samples"] for r in answered)
        out[rnd] = {
            "answered": len(answered),
            "failed": sum(1 for r in rows if r["round"] == rnd and "failed" in r),
            "mean_loss": sum(r["loss"] * r["n_samples"] for r in answered) / total,
            "local_accuracy": sum(r["metrics"]["local_accuracy"] * r["n_samples"] for r in answered)
            / total,
            "local_f1": sum(r["metrics"]["local_f1"] * r["n_samples"] for r in answered) / total,
        }
    return out


def _report(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        fedloom_cmd("researcher", "report", *args),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


def test_report_writes_a_decodable_png_and_a_summary_matching_the_metrics(tmp_path: Path) -> None:
    metrics = _metrics(tmp_path)
    proc = _report(str(tmp_path), "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)

    image = matplotlib.image.imread(summary["png"])
    assert Path(summary["png"]) == tmp_path / "report.png"
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 600
    assert image.std() > 0.01  # something was drawn

    expected = _expected_from_jsonl(metrics)
    assert [r["round"] for r in summary["rounds"]] == [1, 2, 3]
    for row in summary["rounds"]:
        want = expected[row["round"]]
        assert row["answered"] == want["answered"] and row["failed"] == want["failed"]
        assert row["mean_loss"] == pytest.approx(want["mean_loss"], rel=1e-12)
        assert row["metrics"]["local_accuracy"] == pytest.approx(want["local_accuracy"], rel=1e-12)
        assert row["metrics"]["local_f1"] == pytest.approx(want["local_f1"], rel=1e-12)
    assert [r["seconds"] for r in summary["rounds"]] == [1.5, 3.0, 4.5]


def test_report_table_prints_the_rounds(tmp_path: Path) -> None:
    _metrics(tmp_path)
    out_png = tmp_path / "plots" / "run.png"
    proc = _report(str(tmp_path), "--output", str(out_png))
    assert proc.returncode == 0, proc.stderr
    assert out_png.exists()
    assert "local_accuracy" in proc.stdout and "mean train loss" in proc.stdout
    # round 1: (0.9*100 + 0.6*300) / 400 = 0.675
    assert "0.6750" in proc.stdout
    assert f"plot written to {out_png}" in proc.stdout.replace("\n", "")


def test_report_on_a_folder_without_metrics_names_the_experiments_inside(tmp_path: Path) -> None:
    _metrics(tmp_path / "exp-a")
    proc = _report(str(tmp_path))
    assert proc.returncode == 2
    assert "no metrics.jsonl in" in proc.stderr and "exp-a" in proc.stderr


def _summaries(n_rounds: int, n_metrics: int = 5) -> list[RoundSummary]:
    """Rounds whose loss falls to its lowest at round n_rounds // 2, then rises again."""
    best = n_rounds // 2
    return [
        RoundSummary(
            round=r,
            answered=3,
            failed=0,
            mean_loss=0.1 + abs(r - best) * 0.001,
            metrics={f"validation_metric_{i}": 0.123456 + i for i in range(n_metrics)},
            seconds=1.25,
        )
        for r in range(1, n_rounds + 1)
    ]


@pytest.mark.parametrize("width", [80, 120])
def test_summary_on_a_terminal_fits_the_width_and_never_cuts_a_number(width: int) -> None:
    out = io.StringIO()
    console = Console(file=out, width=width, force_terminal=True, color_system=None)
    print_summary(console, _summaries(4), "exp")
    text = out.getvalue()
    assert all(len(line) <= width for line in text.splitlines())
    assert "…" not in text
    for i in range(5):  # every metric value is printed whole, in some table
        assert f"{0.123456 + i:.4f}" in text
    assert text.count("0.1010") == 2 and "0.1000" in text and "0.1020" in text
    # column names wrap (at `_`) rather than numbers: no name part is longer than itself
    assert "validation_" in text and "metric_0" in text.replace("\n", "")


def test_summary_piped_is_plain_aligned_text_of_full_width() -> None:
    out = io.StringIO()
    console = Console(file=out, width=80)  # a file, not a terminal
    print_summary(console, _summaries(3), "exp")
    lines = out.getvalue().splitlines()
    assert lines[0] == "exp"
    header = lines[1].split()
    assert header[:3] == ["round", "answered", "failed"]
    assert "validation_metric_4" in header
    assert len(lines[1]) > 80  # not squeezed into 80 columns
    assert not any(ch in out.getvalue() for ch in "…─│")
    # numbers right-aligned under their names: every row is as long as the header
    assert {len(line) for line in lines[1:5]} == {len(lines[1])}


def test_a_long_run_shows_first_best_and_last_rounds() -> None:
    out = io.StringIO()
    console = Console(file=out, width=200)
    print_summary(console, _summaries(300, n_metrics=1), "exp")
    rounds = [line.split()[0] for line in out.getvalue().splitlines()[2:] if line.strip()]
    table = rounds[: rounds.index("300") + 1]
    assert table == ["1", "2", "3", "...", "150*", "...", "296", "297", "298", "299", "300"]
    text = out.getvalue()
    assert "291 of 300 rounds not shown" in text and "--all" in text
    assert "* best round: 150, lowest mean train loss 0.1000" in text

    every = io.StringIO()
    print_summary(Console(file=every, width=200), _summaries(300, 1), "exp", all_rounds=True)
    assert len(every.getvalue().splitlines()) == 2 + 300 + 1  # title, header, rows, best note


def test_report_piped_into_a_file_prints_every_number_whole(tmp_path: Path) -> None:
    _metrics(tmp_path)
    proc = subprocess.run(
        fedloom_cmd("researcher", "report", str(tmp_path)),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={**os.environ, "COLUMNS": "80"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "…" not in proc.stdout
    row = next(line for line in proc.stdout.splitlines() if line.split()[:1] == ["1"])
    # round 1: 2 answered, 0 failed, loss 0.675, accuracy (0.6*100+0.65*300)/400, f1 ...
    assert row.split()[:5] == ["1", "2", "0", "0.6750", "0.6375"]
