"""The round timeline: spans from several processes land whole in one file, only when asked."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from common.trace import TRACE_ENV, span


def test_spans_of_parent_and_forked_children_are_whole_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "trace.jsonl"
    monkeypatch.setenv(TRACE_ENV, str(path))
    with span("parent", round=3):
        children = []
        for i in range(4):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - child
                for j in range(50):
                    with span("child", i=i, j=j):
                        pass
                os._exit(0)
            children.append(pid)
        for pid in children:
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
    spans = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(spans) == 201
    parent = spans[-1]
    assert parent["name"] == "parent" and parent["round"] == 3 and parent["pid"] == os.getpid()
    children_spans = [s for s in spans if s["name"] == "child"]
    assert {(s["i"], s["j"]) for s in children_spans} == {
        (i, j) for i in range(4) for j in range(50)
    }
    assert all(parent["start"] <= s["start"] <= s["end"] <= parent["end"] for s in children_spans)


def test_nothing_is_written_without_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TRACE_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    with span("quiet"):
        pass
    assert list(tmp_path.iterdir()) == []
