"""Synthetic cohort tables for the cohort-statistics tests: one CSV per node, NaNs included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

#: Numeric columns of every cohort table; `sex` is text.
NUMERIC = ("age", "bmi", "sbp")


def cohort_table(seed: int, rows: int) -> pd.DataFrame:
    """Ages in [20, 90), correlated BMI and blood pressure, ~5 % missing BMI and sbp."""
    rng = np.random.default_rng(seed)
    age = rng.uniform(20, 90, rows)
    bmi = 18 + 0.1 * age + rng.normal(0, 3, rows)
    sbp = 90 + 0.6 * age + 1.5 * bmi + rng.normal(0, 8, rows)
    bmi[rng.random(rows) < 0.05] = np.nan
    sbp[rng.random(rows) < 0.05] = np.nan
    sex = rng.choice(["F", "M"], rows)
    return pd.DataFrame({"age": age, "bmi": bmi, "sbp": sbp, "sex": sex})


def write_cohort(path: Path, table: pd.DataFrame) -> Path:
    """The table as CSV (full float precision, so the node reads what numpy pools)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False, float_format="%.17g")
    return path
