"""The node's SQLite registries: datasets by tag (node.registry) and plan approval (node.plans)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common.errors import DatasetError, NodeHomeError, PlanError
from node.home import SCHEMA_VERSION, connect_database
from node.plans import PLAN_ID_LENGTH, PlanRegistry, canonical_source, plan_hash
from node.registry import DatasetRegistry, normalize_tags

PLAN = """\
class HeartPlan(TorchTrainingPlan):
    def init_model(self):
        return torch.nn.Linear(8, 1)
"""


def _csv(path: Path, rows: int = 4) -> Path:
    pd.DataFrame({"x": np.arange(rows), "y": np.arange(rows) % 2}).to_csv(path, index=False)
    return path


@pytest.fixture
def registry(tmp_path: Path) -> DatasetRegistry:
    return DatasetRegistry(tmp_path / "node.db")


@pytest.fixture
def plans(tmp_path: Path) -> PlanRegistry:
    return PlanRegistry(tmp_path / "node.db")


def _rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


# ------------------------------------------------------------------ database


def test_database_uses_wal_and_records_its_schema_version(registry: DatasetRegistry) -> None:
    assert _rows(registry.db_path, "PRAGMA journal_mode") == [("wal",)]
    assert _rows(registry.db_path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]


def test_commits_are_flushed_to_disk_unless_asked_not_to(tmp_path: Path) -> None:
    # SQLite's synchronous levels: 2 = FULL (journal flushed per commit), 1 = NORMAL.
    db = tmp_path / "node.db"
    with connect_database(db, write=True) as conn:
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2
    with connect_database(db, write=True, durable=False) as conn:
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1
        conn.execute("CREATE TABLE t (x INTEGER)")
        conn.execute("INSERT INTO t VALUES (1)")
    # Committed all the same: another connection (another process) sees it.
    assert _rows(db, "SELECT x FROM t") == [(1,)]


def test_database_from_a_newer_fedloom_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "node.db"
    with sqlite3.connect(db) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(NodeHomeError, match="newer than this fedloom"):
        DatasetRegistry(db)


def test_transaction_rolls_back_everything_on_error(tmp_path: Path) -> None:
    db = tmp_path / "node.db"
    with connect_database(db, write=True) as conn:
        conn.execute("CREATE TABLE t (v INTEGER)")
    with pytest.raises(RuntimeError), connect_database(db, write=True) as conn:
        conn.execute("INSERT INTO t VALUES (1)")
        raise RuntimeError("crash between two writes")
    assert _rows(db, "SELECT * FROM t") == []


# ------------------------------------------------------------------- datasets


def test_add_stores_every_field_and_get_returns_it(
    registry: DatasetRegistry, tmp_path: Path
) -> None:
    path = _csv(tmp_path / "heart.csv")
    added = registry.add("heart", ["#heart", "#csv"], path, target="y", description=" ward 3 ")
    assert registry.get("heart") == added
    assert added.path == str(path.resolve())
    assert (added.data_type, added.n_samples, added.shape) == ("csv", 4, (4, 2))
    assert added.columns == ("x", "y") and added.target == "y"
    assert added.description == "ward 3"
    assert added.added_at.endswith("Z")


def test_tags_are_stripped_deduplicated_and_keep_case_and_order() -> None:
    assert normalize_tags([" #Heart ", "#csv", "", "#Heart", "#heart"]) == (
        "#Heart",
        "#csv",
        "#heart",
    )


@pytest.mark.parametrize("tag", ["a,b", "tab\there"])
def test_tags_with_separators_or_control_characters_are_refused(tag: str) -> None:
    with pytest.raises(DatasetError, match="tag"):
        normalize_tags([tag])


def test_add_without_tags_is_refused(registry: DatasetRegistry, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="at least one tag"):
        registry.add("heart", [" ", ""], _csv(tmp_path / "a.csv"))


@pytest.mark.parametrize("name", ["", "has space", "-dash-first", "x" * 65, "a/b"])
def test_invalid_names_are_refused(registry: DatasetRegistry, tmp_path: Path, name: str) -> None:
    with pytest.raises(DatasetError, match="invalid dataset name"):
        registry.add(name, ["#t"], _csv(tmp_path / "a.csv"))


def test_duplicate_name_is_refused_and_keeps_the_original(
    registry: DatasetRegistry, tmp_path: Path
) -> None:
    first = registry.add("heart", ["#a"], _csv(tmp_path / "a.csv"))
    with pytest.raises(DatasetError, match=r"already registered.*dataset remove heart"):
        registry.add("heart", ["#b"], _csv(tmp_path / "b.csv", rows=9))
    assert registry.list() == [first]
    assert _rows(registry.db_path, "SELECT tag FROM dataset_tags") == [("#a",)]


def test_failed_inspection_writes_nothing(registry: DatasetRegistry, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="target column"):
        registry.add("heart", ["#a"], _csv(tmp_path / "a.csv"), target="label")
    for table in ("datasets", "dataset_tags", "dataset_files"):
        assert _rows(registry.db_path, f"SELECT * FROM {table}") == []


def test_a_crash_while_writing_tags_leaves_no_half_registered_dataset(
    registry: DatasetRegistry, tmp_path: Path
) -> None:
    with sqlite3.connect(registry.db_path) as conn:
        # Make the second tag row fail inside the registry's transaction.
        conn.execute(
            "CREATE TRIGGER no_b BEFORE INSERT ON dataset_tags WHEN NEW.tag = '#b' "
            "BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        )
    with pytest.raises(NodeHomeError, match="disk full"):
        registry.add("heart", ["#a", "#b"], _csv(tmp_path / "a.csv"))
    assert _rows(registry.db_path, "SELECT * FROM datasets") == []
    assert _rows(registry.db_path, "SELECT * FROM dataset_tags") == []


def test_match_needs_all_requested_tags(registry: DatasetRegistry, tmp_path: Path) -> None:
    registry.add("heart-a", ["#heart", "#csv"], _csv(tmp_path / "a.csv"))
    registry.add("heart-b", ["#heart"], _csv(tmp_path / "b.csv"))
    registry.add("mnist", ["#mnist"], _csv(tmp_path / "c.csv"))
    assert [r.name for r in registry.match(["#heart"])] == ["heart-a", "heart-b"]
    assert [r.name for r in registry.match([" #csv", "#heart"])] == ["heart-a"]
    assert registry.match(["#heart", "#mnist"]) == []
    assert registry.match(["#HEART"]) == []


def test_empty_query_matches_nothing(registry: DatasetRegistry, tmp_path: Path) -> None:
    registry.add("heart", ["#heart"], _csv(tmp_path / "a.csv"))
    assert registry.match([]) == []
    assert registry.match([" "]) == []


def test_remove_deletes_the_record_its_tags_and_file_hashes_but_not_the_data(
    registry: DatasetRegistry, tmp_path: Path
) -> None:
    path = _csv(tmp_path / "a.csv")
    registry.add("heart", ["#a", "#b"], path)
    removed = registry.remove("heart")
    assert removed.name == "heart" and path.exists()
    for table in ("datasets", "dataset_tags", "dataset_files"):
        assert _rows(registry.db_path, f"SELECT * FROM {table}") == []


@pytest.mark.parametrize("operation", ["get", "remove", "verify"])
def test_unknown_dataset_is_an_error_naming_the_list_command(
    registry: DatasetRegistry, operation: str
) -> None:
    with pytest.raises(DatasetError, match=r"no dataset named 'ghost'.*dataset list"):
        getattr(registry, operation)("ghost")


def test_list_is_sorted_by_name(registry: DatasetRegistry, tmp_path: Path) -> None:
    for name in ("b", "c", "a"):
        registry.add(name, ["#t"], _csv(tmp_path / f"{name}.csv"))
    assert [r.name for r in registry.list()] == ["a", "b", "c"]


def test_verify_uses_the_stored_manifest_to_name_a_changed_image(
    registry: DatasetRegistry, tmp_path: Path
) -> None:
    root = tmp_path / "imgs"
    (root / "cat").mkdir(parents=True)
    png = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x0dIHDR" + bytes([0, 0, 0, 2, 0, 0, 0, 2, 8, 0])
    (root / "cat" / "1.png").write_bytes(png)
    (root / "cat" / "2.png").write_bytes(png)
    registry.add("pets", ["#pets"], root)
    assert _rows(registry.db_path, "SELECT COUNT(*) FROM dataset_files") == [(2,)]
    assert registry.verify("pets").ok
    (root / "cat" / "2.png").write_bytes(png + b"edited")
    result = registry.verify("pets")
    assert not result.ok and "files changed: cat/2.png" in result.problems


def test_concurrent_writers_lose_no_dataset(tmp_path: Path) -> None:
    db = tmp_path / "node.db"
    DatasetRegistry(db)
    paths = [_csv(tmp_path / f"{i}.csv") for i in range(8)]
    errors: list[BaseException] = []

    def add(i: int) -> None:
        try:
            DatasetRegistry(db).add(f"d{i}", ["#t", f"#{i}"], paths[i])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert _rows(db, "SELECT COUNT(*) FROM datasets") == [(8,)]
    assert _rows(db, "SELECT COUNT(*) FROM dataset_tags") == [(16,)]


# ----------------------------------------------------------------------- plans


def test_canonical_source_ignores_line_endings_and_trailing_whitespace() -> None:
    windows = "\r\n\r\n" + PLAN.replace("\n", "  \r\n") + "\r\n\r\n"
    assert canonical_source(windows) == PLAN
    assert plan_hash(windows) == plan_hash(PLAN)
    assert plan_hash(PLAN.replace("8, 1", "8, 2")) != plan_hash(PLAN)


@pytest.mark.parametrize(
    "source",
    [PLAN, "\r\n" + PLAN.replace("\n", " \t\r\n"), "", "\n\n", "x = 1\r\r\ny = 2   ", "\ufeffx\n"],
)
def test_node_hash_agrees_with_the_researchers(source: str) -> None:
    from common.training_plans.source import plan_hash as researcher_plan_hash

    assert plan_hash(source) == researcher_plan_hash(source)


def test_a_plan_never_seen_becomes_pending_with_time_and_researcher(plans: PlanRegistry) -> None:
    sha = plan_hash(PLAN)
    assert plans.status(sha) is None
    record = plans.record_request(sha, "HeartPlan", PLAN, "researcher-1")
    assert (record.status, record.researcher, record.decided_at) == (
        "pending",
        "researcher-1",
        None,
    )
    assert record.requested_at.endswith("Z")
    assert plans.status(sha) == "pending"
    assert record.plan_id == sha[:PLAN_ID_LENGTH]


def test_a_known_plan_is_returned_unchanged_even_without_source(plans: PlanRegistry) -> None:
    sha = plan_hash(PLAN)
    first = plans.record_request(sha, "HeartPlan", PLAN, "r1")
    plans.approve(first.plan_id)
    again = plans.record_request(sha, "HeartPlan", "", "r2")
    assert (again.status, again.researcher) == ("approved", "r1")
    assert len(plans.list()) == 1


def test_source_that_does_not_match_its_hash_is_refused(plans: PlanRegistry) -> None:
    with pytest.raises(PlanError, match="hashes to"):
        plans.record_request(plan_hash(PLAN), "HeartPlan", PLAN + "import os\n", "r1")
    assert plans.list() == []


def test_unknown_hash_without_source_is_refused(plans: PlanRegistry) -> None:
    with pytest.raises(PlanError, match="without its source"):
        plans.record_request("ab" * 32, "HeartPlan", "", "r1")


def test_oversized_plan_is_refused(plans: PlanRegistry) -> None:
    huge = PLAN + "#" * (1 << 20)
    with pytest.raises(PlanError, match="larger than"):
        plans.record_request(plan_hash(huge), "HeartPlan", huge, "r1")


def test_approve_and_reject_by_short_id_or_prefix_record_the_decision_time(
    plans: PlanRegistry,
) -> None:
    sha = plan_hash(PLAN)
    plans.record_request(sha, "HeartPlan", PLAN, "r1")
    approved = plans.approve(sha[:PLAN_ID_LENGTH])
    assert approved.status == "approved" and approved.decided_at is not None
    assert plans.status(sha) == "approved"
    assert plans.reject(sha[:8].upper()).status == "rejected"
    assert plans.get(sha).status == "rejected"


@pytest.mark.parametrize("bad", ["abc", "not-hex!", "zzzzzzzzzzzz"])
def test_malformed_plan_id_is_refused(plans: PlanRegistry, bad: str) -> None:
    with pytest.raises(PlanError, match="is not a plan id"):
        plans.approve(bad)


def test_unknown_plan_id_is_refused(plans: PlanRegistry) -> None:
    with pytest.raises(PlanError, match=r"no training plan with id 000000.*plan list"):
        plans.approve("000000")


def test_ambiguous_prefix_is_refused(plans: PlanRegistry) -> None:
    # Real sources sharing a 6-digit hash prefix would take ~16M tries to find: insert rows.
    sha_a = "abcdef" + "0" * 58
    sha_b = "abcdef" + "1" * 58
    with connect_database(plans.db_path, write=True) as conn:
        for sha in (sha_a, sha_b):
            conn.execute(
                "INSERT INTO plans (sha256, class_name, source, status, researcher, requested_at)"
                " VALUES (?, 'P', 'x', 'pending', 'r', '2025-01-01T00:00:00Z')",
                (sha,),
            )
    with pytest.raises(PlanError, match="ambiguous"):
        plans.approve("abcdef")
    assert plans.approve("abcdef1").sha256 == sha_b


def test_list_filters_by_status_and_keeps_request_order(plans: PlanRegistry) -> None:
    sources = [PLAN, PLAN + "# v2\n", PLAN + "# v3\n"]
    ids = [plans.record_request(plan_hash(s), "HeartPlan", s, "r").plan_id for s in sources]
    plans.approve(ids[1])
    assert [p.plan_id for p in plans.list("approved")] == [ids[1]]
    assert [p.plan_id for p in plans.list("pending")] == [ids[0], ids[2]]
    assert [p.plan_id for p in plans.list()] == ids


def test_the_stored_source_is_the_canonical_one(plans: PlanRegistry) -> None:
    messy = PLAN.replace("\n", "  \r\n")
    record = plans.record_request(plan_hash(messy), "HeartPlan", messy, "r")
    assert plans.get(record.plan_id).source == PLAN
