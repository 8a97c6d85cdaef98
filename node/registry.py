"""The node's dataset registry: which data the operator shares, under which tags.

Tags are the researcher's way to ask for data (``Experiment(tags=[...])``). They are
normalised the same way at registration and at query time: surrounding whitespace is
stripped, empty tags dropped, duplicates removed (first occurrence kept), and case is
**kept** (``#MNIST`` and ``#mnist`` are different tags, as in Fed-BioMed), so a tag means
exactly what the operator typed. A tag may not contain a comma (the CLI's separator).
A dataset matches a query when it has all the requested tags; an empty query matches
nothing, so a researcher must name what it wants.
"""

from __future__ import annotations

import builtins
import json
import re
import shlex
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from common.errors import DatasetError
from common.tags import tag_problem
from node.datasets import VerifyResult, inspect_dataset, is_folder_type, verify
from node.home import connect_database, create_tables, utc_now

__all__ = ["DatasetRecord", "DatasetRegistry", "normalize_tags", "validate_name"]

#: Dataset names travel in train requests and appear in commands: a conservative alphabet
#: that needs no quoting in a shell, a URL or a file name. 64 characters is plenty.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS datasets (
    name        TEXT PRIMARY KEY,
    path        TEXT NOT NULL,
    data_type   TEXT NOT NULL,
    target      TEXT,
    description TEXT NOT NULL DEFAULT '',
    n_samples   INTEGER NOT NULL,
    shape       TEXT NOT NULL,   -- JSON list of ints
    columns     TEXT NOT NULL,   -- JSON list of strings
    sha256      TEXT NOT NULL,
    added_at    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS dataset_tags (
    dataset  TEXT NOT NULL REFERENCES datasets(name) ON DELETE CASCADE,
    tag      TEXT NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (dataset, tag)
);
CREATE INDEX IF NOT EXISTS dataset_tags_by_tag ON dataset_tags(tag);
CREATE TABLE IF NOT EXISTS dataset_files (
    dataset TEXT NOT NULL REFERENCES datasets(name) ON DELETE CASCADE,
    relpath TEXT NOT NULL,
    sha256  TEXT NOT NULL,
    PRIMARY KEY (dataset, relpath)
);
CREATE TABLE IF NOT EXISTS dataset_options (
    dataset TEXT NOT NULL REFERENCES datasets(name) ON DELETE CASCADE,
    key     TEXT NOT NULL,
    value   TEXT NOT NULL,
    PRIMARY KEY (dataset, key)
);
"""


@dataclass(frozen=True)
class DatasetRecord:
    """A registered dataset as stored in the node database (``path`` is absolute)."""

    name: str
    tags: tuple[str, ...]
    path: str
    data_type: str
    target: str | None
    n_samples: int
    shape: tuple[int, ...]
    columns: tuple[str, ...]
    sha256: str
    added_at: str
    description: str = ""
    #: Type-specific settings given at registration (medical-folder: demographics, index_col).
    options: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples as lists)."""
        data = asdict(self)
        for key in ("tags", "shape", "columns"):
            data[key] = list(data[key])
        data["options"] = dict(self.options)
        return data


def normalize_tags(tags: Iterable[str]) -> tuple[str, ...]:
    """Strip, drop empty and deduplicate tags, keeping case and order; refuse commas and tags
    without the leading `#` (common.tags)."""
    seen: dict[str, None] = {}
    for raw in tags:
        tag = raw.strip()
        if "," in tag:
            raise DatasetError(
                f"tag {tag!r} contains a comma: commas separate tags, pass it as two",
                field="tags",
            )
        if any(not ch.isprintable() for ch in tag):
            raise DatasetError(f"tag {tag!r} contains a control character: remove it", field="tags")
        if tag:
            problem = tag_problem(tag)
            if problem is not None:
                raise DatasetError(problem, field="tags")
            seen.setdefault(tag, None)
    return tuple(seen)


def validate_name(name: str) -> str:
    """Return ``name`` stripped if it is a valid dataset name, else raise ``DatasetError``."""
    stripped = name.strip()
    if not NAME_PATTERN.fullmatch(stripped):
        raise DatasetError(
            f"invalid dataset name {name!r}: use 1 to 64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
            field="name",
        )
    return stripped


def _record(row: sqlite3.Row, tags: tuple[str, ...], options: Mapping[str, str]) -> DatasetRecord:
    return DatasetRecord(
        name=row["name"],
        tags=tags,
        path=row["path"],
        data_type=row["data_type"],
        target=row["target"],
        n_samples=row["n_samples"],
        shape=tuple(json.loads(row["shape"])),
        columns=tuple(json.loads(row["columns"])),
        sha256=row["sha256"],
        added_at=row["added_at"],
        description=row["description"],
        options=dict(options),
    )


def _unknown(name: str) -> DatasetError:
    return DatasetError(
        f"no dataset named {name!r} on this node: `fedloom node dataset list` shows the "
        "registered ones"
    )


class DatasetRegistry:
    """Datasets registered on a node, stored in its SQLite database (created when missing)."""

    def __init__(self, db_path: Path | str) -> None:
        self.db_path = Path(db_path)
        create_tables(self.db_path, _SCHEMA)

    def add(
        self,
        name: str,
        tags: Sequence[str],
        path: Path | str,
        data_type: str | None = None,
        target: str | None = None,
        description: str = "",
        options: Mapping[str, str] | None = None,
    ) -> DatasetRecord:
        """Inspect and register a dataset; refuses a taken name, no tags, or a bad dataset.

        ``options`` are type-specific settings (``DATASET_TYPES[type].options``)."""
        name = validate_name(name)
        clean_tags = normalize_tags(tags)
        if not clean_tags:
            raise DatasetError(
                f"dataset {name!r} needs at least one tag: researchers find data by tags",
                field="tags",
            )
        self._refuse_taken(name)
        # Inspection reads the whole dataset (hash): done before the write transaction so
        # the database is never locked for that long.
        found = inspect_dataset(path, data_type, target, options)
        record = DatasetRecord(
            name=name,
            tags=clean_tags,
            path=str(found.path),
            data_type=found.data_type,
            target=found.target,
            n_samples=found.n_samples,
            shape=found.shape,
            columns=found.columns,
            sha256=found.sha256,
            added_at=utc_now(),
            description=description.strip(),
            options=dict(found.options),
        )
        with connect_database(self.db_path, write=True) as conn:
            try:
                conn.execute(
                    "INSERT INTO datasets (name, path, data_type, target, description, n_samples,"
                    " shape, columns, sha256, added_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        record.name,
                        record.path,
                        record.data_type,
                        record.target,
                        record.description,
                        record.n_samples,
                        json.dumps(list(record.shape)),
                        json.dumps(list(record.columns)),
                        record.sha256,
                        record.added_at,
                    ),
                )
            except sqlite3.IntegrityError:
                # Another process registered the same name while we were hashing.
                raise self._taken(name) from None
            conn.executemany(
                "INSERT INTO dataset_tags (dataset, tag, position) VALUES (?, ?, ?)",
                [(name, tag, i) for i, tag in enumerate(clean_tags)],
            )
            conn.executemany(
                "INSERT INTO dataset_options (dataset, key, value) VALUES (?, ?, ?)",
                [(name, key, value) for key, value in record.options.items()],
            )
            if found.files is not None:
                conn.executemany(
                    "INSERT INTO dataset_files (dataset, relpath, sha256) VALUES (?, ?, ?)",
                    [(name, rel, digest) for rel, digest in found.files.items()],
                )
        return record

    def reregister(self, name: str) -> DatasetRecord:
        """Accept dataset ``name``'s current content: same tags, path, type and target, new hash.

        The operator's step after checking a CHANGED dataset. Refused (nothing changed) when
        the new content is not a valid dataset, or when another process re-registered or
        removed it meanwhile.
        """
        old = self.get(name)
        found = inspect_dataset(old.path, old.data_type, old.target, old.options)
        record = replace(
            old,
            n_samples=found.n_samples,
            shape=found.shape,
            columns=found.columns,
            sha256=found.sha256,
            added_at=utc_now(),
        )
        with connect_database(self.db_path, write=True) as conn:
            row = conn.execute("SELECT sha256 FROM datasets WHERE name = ?", (old.name,)).fetchone()
            if row is None or row["sha256"] != old.sha256:
                raise DatasetError(
                    f"dataset {old.name!r} was re-registered or removed by another process "
                    "meanwhile: look at it again before accepting its content"
                )
            conn.execute(
                "UPDATE datasets SET n_samples = ?, shape = ?, columns = ?, sha256 = ?,"
                " added_at = ? WHERE name = ?",
                (
                    record.n_samples,
                    json.dumps(list(record.shape)),
                    json.dumps(list(record.columns)),
                    record.sha256,
                    record.added_at,
                    record.name,
                ),
            )
            conn.execute("DELETE FROM dataset_files WHERE dataset = ?", (record.name,))
            if found.files is not None:
                conn.executemany(
                    "INSERT INTO dataset_files (dataset, relpath, sha256) VALUES (?, ?, ?)",
                    [(record.name, rel, digest) for rel, digest in found.files.items()],
                )
        return record

    def _taken(self, name: str) -> DatasetError:
        home = shlex.quote(str(self.db_path.parent))
        return DatasetError(
            f"a dataset named {name!r} is already registered: choose another name, or remove "
            f"it first with `fedloom node --home {home} dataset remove {name}`",
            field="name",
        )

    def _refuse_taken(self, name: str) -> None:
        with connect_database(self.db_path) as conn:
            if conn.execute("SELECT 1 FROM datasets WHERE name = ?", (name,)).fetchone():
                raise self._taken(name)

    def get(self, name: str) -> DatasetRecord:
        """The dataset registered as ``name``; ``DatasetError`` when there is none."""
        with connect_database(self.db_path) as conn:
            records = self._select(conn, "WHERE name = ?", (name.strip(),))
        if not records:
            raise _unknown(name)
        return records[0]

    def remove(self, name: str) -> DatasetRecord:
        """Unregister a dataset (its files are left untouched) and return what was removed."""
        with connect_database(self.db_path, write=True) as conn:
            records = self._select(conn, "WHERE name = ?", (name.strip(),))
            if not records:
                raise _unknown(name)
            # dataset_tags and dataset_files rows go with it (ON DELETE CASCADE).
            conn.execute("DELETE FROM datasets WHERE name = ?", (records[0].name,))
        return records[0]

    def match(self, tags: Sequence[str]) -> list[DatasetRecord]:
        """Datasets having all of ``tags`` (normalised), by name; none for an empty query."""
        wanted = normalize_tags(tags)
        if not wanted:
            return []
        marks = ", ".join("?" for _ in wanted)
        with connect_database(self.db_path) as conn:
            return self._select(
                conn,
                f"WHERE name IN (SELECT dataset FROM dataset_tags WHERE tag IN ({marks})"
                " GROUP BY dataset HAVING COUNT(*) = ?)",
                (*wanted, len(wanted)),
            )

    def verify(self, name: str) -> VerifyResult:
        """Re-hash dataset ``name`` and report what changed since its registration."""
        record = self.get(name)
        manifest: dict[str, str] | None = None
        if is_folder_type(record.data_type):
            with connect_database(self.db_path) as conn:
                rows = conn.execute(
                    "SELECT relpath, sha256 FROM dataset_files WHERE dataset = ?", (record.name,)
                ).fetchall()
            manifest = {row["relpath"]: row["sha256"] for row in rows}
        return verify(record, manifest)

    def list(self) -> list[DatasetRecord]:
        """All registered datasets, by name."""
        with connect_database(self.db_path) as conn:
            return self._select(conn, "", ())

    @staticmethod
    def _select(
        conn: sqlite3.Connection, where: str, params: Sequence[Any]
    ) -> builtins.list[DatasetRecord]:
        rows = conn.execute(f"SELECT * FROM datasets {where} ORDER BY name", params).fetchall()
        tags: dict[str, list[str]] = {row["name"]: [] for row in rows}
        if rows:
            marks = ", ".join("?" for _ in rows)
            for tag_row in conn.execute(
                f"SELECT dataset, tag FROM dataset_tags WHERE dataset IN ({marks})"
                " ORDER BY dataset, position",
                list(tags),
            ):
                tags[tag_row["dataset"]].append(tag_row["tag"])
        options: dict[str, dict[str, str]] = {name: {} for name in tags}
        if rows:
            for option_row in conn.execute(
                f"SELECT dataset, key, value FROM dataset_options WHERE dataset IN ({marks})",
                list(tags),
            ):
                options[option_row["dataset"]][option_row["key"]] = option_row["value"]
        return [_record(row, tuple(tags[row["name"]]), options[row["name"]]) for row in rows]
