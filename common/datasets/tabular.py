"""``csv`` datasets: UTF-8, comma-separated, one header line (what ``pandas.read_csv`` reads).

Shape is ``(rows, columns)``; the target, when given, must be a column. Rows are streamed
at inspection, never loaded whole. Plans get a ``pandas.DataFrame``.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common.datasets.base import (
    DATASET_TYPES,
    FileDatasetType,
    listing,
    missing_target,
)
from common.errors import DatasetError

__all__ = ["CsvType"]

logger = logging.getLogger(__name__)


@DATASET_TYPES.register("csv")
class CsvType(FileDatasetType):
    """A CSV table, one sample a row."""

    extensions = (".csv",)
    description = "a CSV file"

    def measure(
        self, path: Path, target: str | None
    ) -> tuple[int, tuple[int, ...], tuple[str, ...]]:
        return _inspect_csv(path, target)

    def load(
        self, path: Path, target: str | None, options: Mapping[str, str], **kwargs: Any
    ) -> Any:
        import pandas as pd

        return pd.read_csv(path, **kwargs)


def _inspect_csv(path: Path, target: str | None) -> tuple[int, tuple[int, ...], tuple[str, ...]]:
    header: list[str] | None = None
    n_rows = 0
    try:
        # utf-8-sig drops the byte-order mark spreadsheet programs write.
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            for row in reader:
                if not row:  # blank line: pandas skips it too
                    continue
                if header is None:
                    header = row
                    continue
                if len(row) != len(header):
                    raise DatasetError(
                        f"{path} line {reader.line_num} has {len(row)} fields but the header has "
                        f"{len(header)}: fix the row or the header"
                    )
                n_rows += 1
    except UnicodeDecodeError as exc:
        raise DatasetError(
            f"{path} is not UTF-8 text (byte {exc.start}): save it as UTF-8 CSV, or pass "
            "--type npy/npz for a binary file"
        ) from exc
    except csv.Error as exc:
        raise DatasetError(f"{path} is not a valid CSV file: {exc}") from exc
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if header is None:
        raise DatasetError(f"{path} is empty: a CSV dataset needs a header line and rows")
    columns = tuple(header)
    duplicates = sorted({name for name in columns if columns.count(name) > 1})
    if duplicates:
        raise DatasetError(
            f"{path} has duplicate column names ({listing(duplicates)}): rename them"
        )
    if len(columns) == 1 and any(sep in columns[0] for sep in ";\t|"):
        logger.warning(
            "%s has a single column %r: is it separated by something else than commas?",
            path,
            columns[0],
        )
    if n_rows == 0:
        raise DatasetError(f"{path} has a header but no rows: there is nothing to train on")
    if target is not None and target not in columns:
        raise missing_target(path, target, columns, "column")
    return n_rows, (n_rows, len(columns)), columns
