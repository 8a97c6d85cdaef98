"""A registered dataset's named numeric columns, as the float matrix cohort statistics need.

One reader per dataset type, registered by name (``TABLE_READERS``); a type without one
(``images``) has no tabular columns and is refused with that reason. ``csv``: every column;
``npz``: every one-dimensional array is a column; ``npy``: a structured array's fields;
``medical-folder``: the per-subject demographics table (one row per subject folder).
Another type that serves a table plugs in with ``register_table_reader(type, reader)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common.errors import AnalyticsError, ConfigurationError
from node.registry import DatasetRecord

__all__ = [
    "TABLE_READERS",
    "TableReader",
    "numeric_columns",
    "read_table",
    "register_table_reader",
]

#: Reads a dataset's table: one row per sample (subject), named columns, any dtypes.
TableReader = Callable[[DatasetRecord], pd.DataFrame]

#: Columns listed in an error message before "...": enough to spot a typo.
MAX_LISTED = 20


def _read_csv(record: DatasetRecord) -> pd.DataFrame:
    return pd.read_csv(record.path, encoding="utf-8-sig")


def _read_npz(record: DatasetRecord) -> pd.DataFrame:
    with np.load(record.path, allow_pickle=False) as archive:
        columns = {name: archive[name] for name in archive.files if archive[name].ndim == 1}
    lengths = {len(v) for v in columns.values()}
    if not columns or len(lengths) != 1:
        raise AnalyticsError(
            f"dataset {record.name!r}: an .npz answers cohort statistics through its "
            f"one-dimensional arrays of equal length, one per column; it has "
            f"{ {k: v.shape for k, v in columns.items()} or 'none' }"
        )
    return pd.DataFrame(columns)


def _read_npy(record: DatasetRecord) -> pd.DataFrame:
    array = np.load(record.path, allow_pickle=False)
    if array.dtype.names is None:
        raise AnalyticsError(
            f"dataset {record.name!r} is a plain .npy array, whose columns have no names: "
            "register the data as a CSV, an .npz with one array per column, or a structured array"
        )
    return pd.DataFrame({name: array[name] for name in array.dtype.names})


def _read_demographics(record: DatasetRecord) -> pd.DataFrame:
    # One row per subject that has a folder; the subject id is the index, not a column.
    from common.datasets.medical_folder import demographics_table

    return demographics_table(record)


#: Table reader of each dataset type that has one, by type name.
TABLE_READERS: dict[str, TableReader] = {
    "csv": _read_csv,
    "npz": _read_npz,
    "npy": _read_npy,
    "medical-folder": _read_demographics,
}


def register_table_reader(data_type: str, reader: TableReader) -> None:
    """Serve cohort statistics over datasets of ``data_type`` through ``reader``."""
    if data_type in TABLE_READERS:
        raise ConfigurationError(f"dataset type {data_type!r} already has a table reader")
    TABLE_READERS[data_type] = reader


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:MAX_LISTED])
    return shown + (f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else "")


def read_table(record: DatasetRecord) -> pd.DataFrame:
    """The dataset's table; refuses a type that has none."""
    reader = TABLE_READERS.get(record.data_type)
    if reader is None:
        raise AnalyticsError(
            f"dataset {record.name!r} is of type {record.data_type!r}, which has no table of named "
            f"columns for cohort statistics (supported types: {', '.join(sorted(TABLE_READERS))})"
        )
    if not Path(record.path).exists():
        raise AnalyticsError(f"dataset {record.name!r} points to {record.path}, which is gone")
    return reader(record)


def numeric_columns(table: pd.DataFrame, columns: Sequence[str], dataset: str) -> np.ndarray:
    """``columns`` of ``table`` as a float64 matrix (NaN where missing).

    Raises AnalyticsError naming an absent or non-numeric column and the available ones.
    """
    available = [str(c) for c in table.columns]
    numeric = [str(c) for c in table.columns if _is_numeric(table[c])]
    for column in columns:
        if column not in available:
            raise AnalyticsError(
                f"dataset {dataset!r} has no column {column!r}; its numeric columns are "
                f"{_listing(numeric)}"
            )
        if column not in numeric:
            raise AnalyticsError(
                f"column {column!r} of dataset {dataset!r} is not numeric (dtype "
                f"{table[column].dtype}, e.g. {_example(table[column])!r}); its numeric columns are "
                f"{_listing(numeric)}"
            )
    matrix: np.ndarray = table[list(columns)].to_numpy(dtype=np.float64, na_value=np.nan)
    return matrix


def _is_numeric(series: Any) -> bool:
    return bool(pd.api.types.is_numeric_dtype(series.dtype))


def _example(series: Any) -> Any:
    present = series.dropna()
    return present.iloc[0] if len(present) else None
