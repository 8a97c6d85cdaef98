"""`fedloom researcher report DIR`: the PNG decodes and the summary matches metrics.jsonl."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import matplotlib.image
import pytest

from researcher.history import MetricsLog, NodeRoundRecord, RoundRecord
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
    assert "local_accuracy" in proc.stdout and "mean loss" in proc.stdout
    # round 1: (0.9*100 + 0.6*300) / 400 = 0.675
    assert "0.6750" in proc.stdout
    assert f"plot written to {out_png}" in proc.stdout.replace("\n", "")


def test_report_on_a_folder_without_metrics_names_the_experiments_inside(tmp_path: Path) -> None:
    _metrics(tmp_path / "exp-a")
    proc = _report(str(tmp_path))
    assert proc.returncode == 2
    assert "no metrics.jsonl in" in proc.stderr and "exp-a" in proc.stderr
