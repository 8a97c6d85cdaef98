"""`fedloom data split` and common.data_split: statistics, determinism, files, validation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common.data_split import (
    class_counts,
    heterogeneity,
    parse_split,
    split_indices,
)
from common.errors import ConfigurationError
from fedloom.cli import main


def _labels(n_classes: int = 10, per_class: int = 100, seed: int = 3) -> np.ndarray:
    labels = np.repeat(np.arange(n_classes), per_class)
    return np.random.default_rng(seed).permutation(labels)


def _assert_partition(parts: list[np.ndarray], n_samples: int) -> None:
    merged = np.concatenate(parts)
    assert sorted(merged.tolist()) == list(range(n_samples))


@pytest.mark.parametrize("split", ["iid", "label-skew:3", "dirichlet:0.3"])
def test_every_sample_lands_on_exactly_one_node(split: str) -> None:
    labels = _labels()
    parts = split_indices(7, parse_split(split), labels=labels, seed=1)
    assert len(parts) == 7
    assert all(len(p) > 0 for p in parts)
    _assert_partition(parts, len(labels))


def test_iid_split_balances_every_class_and_node_size_within_one_sample() -> None:
    labels = np.concatenate([np.zeros(503), np.ones(251), np.full(97, 2)])
    parts = split_indices(6, parse_split("iid"), labels=labels, seed=5)
    _, rows = class_counts(labels, parts)
    sizes = [r.n_samples for r in rows]
    assert max(sizes) - min(sizes) <= 1
    per_class = np.array([r.per_class for r in rows])
    assert (per_class.max(axis=0) - per_class.min(axis=0) <= 1).all()
    assert heterogeneity(rows) < 0.01


def test_iid_without_labels_splits_sizes_evenly() -> None:
    parts = split_indices(4, parse_split("iid"), n_samples=10, seed=0)
    assert sorted(len(p) for p in parts) == [2, 2, 3, 3]
    _assert_partition(parts, 10)


def test_label_skew_gives_each_node_exactly_k_classes_and_keeps_every_class() -> None:
    labels = _labels(n_classes=10)
    parts = split_indices(8, parse_split("label-skew:2"), labels=labels, seed=2)
    _, rows = class_counts(labels, parts)
    for row in rows:
        assert sum(1 for c in row.per_class if c > 0) == 2
    totals = np.array([r.per_class for r in rows]).sum(axis=0)
    assert totals.tolist() == [100] * 10
    # 8 nodes x 2 classes = 16 holdings over 10 classes: each class held by 1 or 2 nodes.
    holders = (np.array([r.per_class for r in rows]) > 0).sum(axis=0)
    assert set(holders.tolist()) <= {1, 2}


def test_label_skew_with_one_class_per_node_is_maximally_skewed() -> None:
    labels = _labels(n_classes=4)
    parts = split_indices(4, parse_split("label-skew:1"), labels=labels, seed=0)
    _, rows = class_counts(labels, parts)
    assert heterogeneity(rows) == pytest.approx(0.75)


def test_dirichlet_smaller_alpha_gives_more_skew() -> None:
    labels = _labels(n_classes=10, per_class=200)

    def mean_skew(alpha: float) -> float:
        skews = []
        for seed in range(5):
            parts = split_indices(10, parse_split(f"dirichlet:{alpha}"), labels=labels, seed=seed)
            skews.append(heterogeneity(class_counts(labels, parts)[1]))
        return float(np.mean(skews))

    skew = {alpha: mean_skew(alpha) for alpha in (0.1, 1.0, 100.0)}
    assert skew[0.1] > skew[1.0] > skew[100.0]
    assert skew[0.1] > 0.5
    assert skew[100.0] < 0.1


@pytest.mark.parametrize("split", ["iid", "label-skew:2", "dirichlet:0.5"])
def test_same_seed_gives_same_split_and_another_seed_another(split: str) -> None:
    labels = _labels()
    spec = parse_split(split)
    first = split_indices(5, spec, labels=labels, seed=11)
    again = split_indices(5, spec, labels=labels, seed=11)
    other = split_indices(5, spec, labels=labels, seed=12)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("random", "unknown split 'random'"),
        ("dirichlet:0", "alpha must be a finite number > 0"),
        ("dirichlet:-1", "alpha must be a finite number > 0"),
        ("dirichlet", "needs alpha"),
        ("dirichlet:abc", "alpha must be a number"),
        ("label-skew:0", "at least 1 class"),
        ("label-skew:two", "whole number"),
        ("iid:3", "takes no parameter"),
    ],
)
def test_bad_split_names_are_refused_with_the_fix(text: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        parse_split(text)


def test_more_nodes_than_samples_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="5 nodes but only 4 samples"):
        split_indices(5, parse_split("iid"), labels=[0, 1, 0, 1], seed=0)


def test_label_skew_that_would_drop_classes_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"use label-skew:3 or more nodes"):
        split_indices(4, parse_split("label-skew:2"), labels=_labels(n_classes=10), seed=0)


def test_label_skew_with_more_classes_per_node_than_exist_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="only 3"):
        split_indices(2, parse_split("label-skew:4"), labels=_labels(n_classes=3), seed=0)


def test_dirichlet_that_cannot_fill_every_node_says_what_to_do() -> None:
    # One class and a tiny alpha: every draw puts the whole class on one node.
    with pytest.raises(ConfigurationError, match="use a larger alpha, fewer nodes"):
        split_indices(5, parse_split("dirichlet:0.001"), labels=np.zeros(5), seed=0)


# ------------------------------------------------------------------ the command


def _write_csv(path: Path, n: int = 120) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "age": rng.integers(20, 90, n),
            "score": np.round(rng.normal(size=n), 6),
            "label": np.where(np.arange(n) % 3 == 0, "sick", "healthy"),
        }
    )
    frame.to_csv(path, index=False)
    return frame


def test_split_csv_writes_node_files_that_together_are_the_source(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _write_csv(tmp_path / "cohort.csv")
    code = main(
        [
            "data", "split", str(tmp_path / "cohort.csv"), "--nodes", "3",
            "--split", "dirichlet:1", "--target", "label", "--seed", "4",
        ]
    )  # fmt: skip
    assert code == 0
    out = tmp_path / "cohort-nodes"
    frames = [pd.read_csv(out / f"node-{i}.csv") for i in (1, 2, 3)]
    assert all(list(f.columns) == ["age", "score", "label"] for f in frames)
    merged = pd.concat(frames).sort_values(["age", "score"]).reset_index(drop=True)
    expected = source.sort_values(["age", "score"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(merged, expected)
    printed = capsys.readouterr().out
    assert "class healthy" in printed and "class sick" in printed
    for i, frame in enumerate(frames, start=1):
        counts = frame["label"].value_counts()
        row = next(line for line in printed.splitlines() if line.startswith(f"{i} "))
        assert row.split()[2:] == [
            str(len(frame)),
            str(counts.get("healthy", 0)),
            str(counts.get("sick", 0)),
        ]


def test_split_json_output_lists_counts_per_node(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_csv(tmp_path / "cohort.csv", n=90)
    code = main(
        [
            "data", "split", str(tmp_path / "cohort.csv"), "--nodes", "2", "--split", "iid",
            "--target", "label", "--out", str(tmp_path / "parts"), "--format", "json",
        ]
    )  # fmt: skip
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["split"] == "iid"
    assert [n["classes"] for n in doc["nodes"]] == [
        {"healthy": 30, "sick": 15},
        {"healthy": 30, "sick": 15},
    ]
    assert doc["heterogeneity"] == 0.0
    assert Path(doc["nodes"][1]["path"]) == tmp_path / "parts" / "node-2.csv"


def test_split_npz_keeps_arrays_aligned(tmp_path: Path) -> None:
    x = np.arange(200, dtype=np.float32).reshape(100, 2)
    y = np.arange(100) % 4
    np.savez(tmp_path / "d.npz", x=x, y=y)
    code = main(
        ["data", "split", str(tmp_path / "d.npz"), "--nodes", "4", "--split", "label-skew:1",
         "--target", "y", "--format", "json"]
    )  # fmt: skip
    assert code == 0
    for i in range(1, 5):
        with np.load(tmp_path / "d-nodes" / f"node-{i}.npz") as part:
            assert len(np.unique(part["y"])) == 1
            # rows travelled together: x's first column is twice the original row index
            np.testing.assert_array_equal(part["y"], (part["x"][:, 0] / 2).astype(int) % 4)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--split", "label-skew:1"], "name the column holding them with --target"),
        (["--split", "iid", "--target", "outcome"], "has no column 'outcome'"),
        (["--split", "dirichlet:0"], "alpha must be a finite number > 0"),
        (["--split", "zipf"], "unknown split 'zipf'"),
    ],
)
def test_split_command_errors_name_the_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    _write_csv(tmp_path / "cohort.csv")
    code = main(["data", "split", str(tmp_path / "cohort.csv"), "--nodes", "3", *extra])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "age, score, label" in err or "--target" not in message
    assert not (tmp_path / "cohort-nodes").exists()


def test_split_refuses_to_overwrite_node_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_csv(tmp_path / "cohort.csv")
    args = ["data", "split", str(tmp_path / "cohort.csv"), "--nodes", "2", "--split", "iid"]
    assert main(args) == 0
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err


def test_split_by_a_continuous_target_is_refused_for_class_splits_and_plain_for_iid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frame = _write_csv(tmp_path / "cohort.csv")
    base = ["data", "split", str(tmp_path / "cohort.csv"), "--nodes", "3", "--target", "score"]
    assert main([*base, "--split", "dirichlet:1"]) == 2
    assert "non-integer numbers (a regression target?)" in capsys.readouterr().err
    assert main([*base, "--split", "iid", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [n["samples"] for n in doc["nodes"]] == [len(frame) // 3] * 3
    assert all(n["classes"] == {} for n in doc["nodes"])


def test_split_table_counts_classes_when_there_are_too_many_to_show(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pd.DataFrame({"x": range(400), "y": [i % 40 for i in range(400)]}).to_csv(
        tmp_path / "many.csv", index=False
    )
    args = ["data", "split", str(tmp_path / "many.csv"), "--nodes", "4", "--target", "y"]
    assert main([*args, "--split", "label-skew:10"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("node"))
    assert header.split() == ["node", "file", "samples", "classes"]
    assert [line.split()[-1] for line in lines if line[:1].isdigit()] == ["10"] * 4
