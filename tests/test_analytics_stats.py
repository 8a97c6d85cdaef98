"""Cohort statistics without a network: node-side sufficient statistics, pooling, quantiles,
query validation, the node's refusals (unknown or text column, minimum cohort), tables of npz
and medical-folder datasets, and the CLI's refusal of SecAgg without declared ranges."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common.analytics import (
    AnalyticsQuery,
    HistogramSpec,
    ValueRange,
    clear_statistics,
    secure_sums,
)
from common.errors import AnalyticsError, DatasetError, PayloadError
from common.secagg import FixedPoint
from fedloom.cli import main
from node.analytics import DEFAULT_MIN_COHORT, CohortPolicy, analytics_answer, numeric_columns
from node.registry import DatasetRegistry
from researcher.analytics import CohortStatistics
from researcher.analytics.pooling import pool_clear, pool_secure
from researcher.analytics.result import build_statistics, histogram_quantile
from researcher.analytics.run import ANALYTICS_CLIP, ANALYTICS_FRACTION_BITS
from tests.analytics_data import NUMERIC, cohort_table, write_cohort
from tests.conftest import free_port

QUERY = AnalyticsQuery(
    columns=NUMERIC,
    histograms=(HistogramSpec("age", 0, 100, 20), HistogramSpec("bmi", 10, 40, 30)),
    correlation=True,
    ranges=(ValueRange("sbp", 60, 260),),
)


def _tables() -> list[pd.DataFrame]:
    return [cohort_table(seed, rows) for seed, rows in ((1, 40), (2, 75), (3, 23))]


def _pooled_reference(tables: list[pd.DataFrame]) -> np.ndarray:
    return np.concatenate([t[list(NUMERIC)].to_numpy(dtype=float) for t in tables])


def _build(moments: object, *, secagg: bool, quantiles: tuple[float, ...] = ()) -> CohortStatistics:
    return build_statistics(
        moments,  # type: ignore[arg-type]
        QUERY,
        tags=["#cohort"],
        nodes=["a", "b", "c"],
        quantiles=quantiles,
        secagg=secagg,
        failures={},
    )


def _check_against_numpy(stats: CohortStatistics, data: np.ndarray, rtol: float) -> None:
    for index, name in enumerate(NUMERIC):
        column = data[:, index]
        present = column[~np.isnan(column)]
        got = stats.columns[name]
        assert got.count == present.size
        assert got.missing == column.size - present.size
        assert got.mean == pytest.approx(np.mean(present), rel=rtol)
        assert got.variance == pytest.approx(np.var(present, ddof=1), rel=rtol)
    complete = data[~np.isnan(data).any(axis=1)]
    assert stats.correlation is not None
    assert stats.correlation.rows == len(complete)
    np.testing.assert_allclose(
        stats.correlation.matrix, np.corrcoef(complete.T), rtol=rtol, atol=rtol
    )


def test_clear_statistics_pooled_over_nodes_equal_numpy_over_concatenated_data() -> None:
    tables = _tables()
    answers = {
        f"node-{i}": clear_statistics(t[list(NUMERIC)].to_numpy(dtype=float), QUERY)
        for i, t in enumerate(tables)
    }
    stats = _build(pool_clear(answers, QUERY), secagg=False)
    data = _pooled_reference(tables)
    _check_against_numpy(stats, data, rtol=1e-12)
    for index, name in enumerate(NUMERIC):
        assert stats.columns[name].min == np.nanmin(data[:, index])
        assert stats.columns[name].max == np.nanmax(data[:, index])
        assert stats.columns[name].min_max == "observed"
    age = data[:, 0]
    counts, _ = np.histogram(age, bins=np.linspace(0, 100, 21))
    assert stats.columns["age"].histogram is not None
    assert stats.columns["age"].histogram.counts == counts.tolist()


def test_clear_pooling_is_stable_for_large_offsets() -> None:
    # Values near 1e9 with unit spread: a naive sum-of-squares formula loses every digit.
    rng = np.random.default_rng(0)
    parts = [1e9 + rng.normal(0, 1, (n, 2)) for n in (30, 50)]
    query = AnalyticsQuery(("a", "b"), correlation=True)
    moments = pool_clear({str(i): clear_statistics(p, query) for i, p in enumerate(parts)}, query)
    data = np.concatenate(parts)
    assert moments.m2 / (len(data) - 1) == pytest.approx(np.var(data, axis=0, ddof=1), rel=1e-6)


def test_secure_sums_through_fixed_point_equal_numpy_within_the_stated_bound() -> None:
    tables = _tables()
    codec = FixedPoint(ANALYTICS_CLIP, ANALYTICS_FRACTION_BITS)
    total: dict[str, np.ndarray] = {}
    for table in tables:
        for name, value in secure_sums(table[list(NUMERIC)].to_numpy(dtype=float), QUERY).items():
            encoded = codec.encode(value, node_id="n", name=name)
            total[name] = total.get(name, np.zeros_like(encoded)) + encoded  # wraps mod 2^64
    sums = {name: codec.decode_sum(value) for name, value in total.items()}
    stats = _build(pool_secure(sums, QUERY), secagg=True)
    data = _pooled_reference(tables)
    # Values lie inside their declared ranges here, so no value is clipped.
    assert [stats.columns[c].clipped for c in NUMERIC] == [0, 0, 0]
    # Each sum is off by at most nodes * 2^-31 in [0, 1] units: relative error ~1e-9.
    _check_against_numpy(stats, data, rtol=1e-7)
    assert (stats.columns["age"].min, stats.columns["age"].max) == (0.0, 100.0)
    assert stats.columns["age"].min_max.startswith("declared range")


def test_secure_sums_clip_values_into_the_declared_range_and_count_them() -> None:
    values = np.array([[1.0], [5.0], [50.0], [np.nan], [-3.0]])
    query = AnalyticsQuery(("x",), ranges=(ValueRange("x", 0, 10),))
    moments = pool_secure(secure_sums(values, query), query)
    clipped = np.array([1.0, 5.0, 10.0, 0.0])
    assert moments.clipped is not None and moments.clipped.tolist() == [2.0]
    assert moments.mean[0] == pytest.approx(clipped.mean())
    assert moments.m2[0] == pytest.approx(((clipped - clipped.mean()) ** 2).sum())


@pytest.mark.parametrize("q", [0.05, 0.25, 0.5, 0.75, 0.95])
def test_histogram_quantile_is_within_one_bin_of_the_inverted_cdf_quantile(q: float) -> None:
    rng = np.random.default_rng(7)
    values = rng.gamma(4.0, 10.0, 5000)
    spec = HistogramSpec("x", 0, 200, 40)
    counts = np.concatenate([[0], np.histogram(values, bins=spec.edges)[0], [0]])
    estimate = histogram_quantile(spec, counts.astype(float), q)
    assert estimate is not None
    assert abs(estimate - np.quantile(values, q, method="inverted_cdf")) <= spec.width


def test_quantile_among_values_outside_the_bins_is_unknown() -> None:
    spec = HistogramSpec("x", 0, 10, 5)
    counts = np.array([30.0, 10, 10, 10, 10, 10, 20])  # 30 below, 20 above
    assert histogram_quantile(spec, counts, 0.1) is None
    assert histogram_quantile(spec, counts, 0.95) is None
    assert histogram_quantile(spec, counts, 0.5) == pytest.approx(4.0)  # 50th value ends bin 2


def test_malformed_node_answer_is_refused_naming_the_node() -> None:
    answer = clear_statistics(np.ones((12, 3)), QUERY)
    answer["mean"] = np.ones(2)
    with pytest.raises(PayloadError, match=r"node-x.*'mean' has shape"):
        pool_clear({"node-x": answer}, QUERY)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: HistogramSpec.parse("age=0:100"), "COLUMN=LOW:HIGH:BINS"),
        (lambda: HistogramSpec.parse("age=10:0:5"), "low < high"),
        (lambda: HistogramSpec.parse("age=0:1:100000"), "between 1 and 1000"),
        (lambda: ValueRange.parse("age=zero:1"), "not a number"),
        (lambda: AnalyticsQuery(("a", "a")), "named twice"),
        (lambda: AnalyticsQuery(("a",), correlation=True), "at least two columns"),
        (lambda: AnalyticsQuery(("a",), (HistogramSpec("b", 0, 1, 2),)), "not among the queried"),
        (lambda: AnalyticsQuery(("a", "b")).require_ranges(), r"--range COLUMN=LOW:HIGH"),
    ],
)
def test_bad_queries_are_refused_with_the_fix(build: object, message: str) -> None:
    with pytest.raises(AnalyticsError, match=message):
        build()  # type: ignore[operator]


def _registered(tmp_path: Path, rows: int = 40) -> tuple[DatasetRegistry, str]:
    registry = DatasetRegistry(tmp_path / "node.db")
    path = write_cohort(tmp_path / "cohort.csv", cohort_table(5, rows))
    registry.add("cohort", ["#cohort"], path)
    return registry, "cohort"


def test_unknown_column_is_refused_naming_the_numeric_columns(tmp_path: Path) -> None:
    registry, name = _registered(tmp_path)
    table = pd.read_csv(registry.get(name).path)
    with pytest.raises(
        AnalyticsError, match=r"no column 'weight'; its numeric columns are 'age', 'bmi', 'sbp'"
    ):
        numeric_columns(table, ["age", "weight"], name)


def test_text_column_is_refused_naming_its_dtype(tmp_path: Path) -> None:
    registry, name = _registered(tmp_path)
    table = pd.read_csv(registry.get(name).path)
    with pytest.raises(AnalyticsError, match=r"column 'sex' .* is not numeric \(dtype object"):
        numeric_columns(table, ["sex"], name)


def test_node_refuses_below_its_minimum_cohort_naming_threshold_and_command(tmp_path: Path) -> None:
    registry, name = _registered(tmp_path, rows=40)
    policy = CohortPolicy(registry.db_path)
    assert policy.min_cohort(name) == DEFAULT_MIN_COHORT
    request = AnalyticsQuery(("age",)).to_request(name)
    _sections, rows = analytics_answer(
        request,
        registry.get(name),
        min_cohort=policy.min_cohort(name),
        fix="CMD",
        masker=_no_masker,
    )
    assert rows == 40
    policy.set_min_cohort(name, 41)
    with pytest.raises(AnalyticsError, match=r"minimum cohort size of 41.*`CMD`"):
        analytics_answer(
            request,
            registry.get(name),
            min_cohort=policy.min_cohort(name),
            fix="CMD",
            masker=_no_masker,
        )


def test_minimum_cohort_is_refused_for_unknown_datasets_and_bad_sizes(tmp_path: Path) -> None:
    registry, name = _registered(tmp_path)
    policy = CohortPolicy(registry.db_path)
    with pytest.raises(DatasetError, match="no dataset named 'other'"):
        policy.set_min_cohort("other", 5)
    with pytest.raises(AnalyticsError, match=">= 1"):
        policy.set_min_cohort(name, 0)
    registry.remove(name)  # the setting goes with the dataset
    registry.add(name, ["#cohort"], tmp_path / "cohort.csv")
    assert policy.min_cohort(name) == DEFAULT_MIN_COHORT


def test_npz_with_one_dimensional_arrays_serves_columns(tmp_path: Path) -> None:
    path = tmp_path / "cohort.npz"
    np.savez(path, age=np.arange(20.0), bmi=np.linspace(18, 30, 20), image=np.zeros((20, 4)))
    registry = DatasetRegistry(tmp_path / "node.db")
    registry.add("arrays", ["#cohort"], path)
    request = AnalyticsQuery(("age", "bmi")).to_request("arrays")
    sections, _ = analytics_answer(
        request, registry.get("arrays"), min_cohort=10, fix="CMD", masker=_no_masker
    )
    (arrays,) = sections.values()
    assert arrays["mean"].tolist() == pytest.approx([9.5, 24.0])
    request = AnalyticsQuery(("image",)).to_request("arrays")
    with pytest.raises(AnalyticsError, match="no column 'image'"):
        analytics_answer(
            request, registry.get("arrays"), min_cohort=10, fix="CMD", masker=_no_masker
        )


def _no_masker() -> object:
    raise AssertionError("a clear query must not ask for a SecAgg masker")


def test_medical_folder_demographics_serve_statistics_per_subject(tmp_path: Path) -> None:
    from tests.medical_data import write_cohort as write_medical_folder

    root = write_medical_folder(tmp_path / "mri", n_subjects=12, shape=(2, 2, 2), dicom=False)
    with open(root / "participants.csv", "a") as fh:
        fh.write("sub-999,99,1\n")  # a row without a subject folder is not a subject
    registry = DatasetRegistry(tmp_path / "node.db")
    registry.add("mri", ["#mri"], root, data_type="medical-folder")
    request = AnalyticsQuery(("age", "label")).to_request("mri")
    sections, rows = analytics_answer(
        request, registry.get("mri"), min_cohort=10, fix="CMD", masker=_no_masker
    )
    (arrays,) = sections.values()
    assert rows == 12
    assert arrays["mean"].tolist() == pytest.approx([np.mean(np.arange(40, 52)), 0.5])
    with pytest.raises(
        AnalyticsError, match="no column 'bmi'; its numeric columns are 'age', 'label'"
    ):
        analytics_answer(
            AnalyticsQuery(("bmi",)).to_request("mri"),
            registry.get("mri"),
            min_cohort=10,
            fix="CMD",
            masker=_no_masker,
        )


def test_cli_refuses_secagg_without_declared_ranges(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "researcher", "analytics", "--tags", "#cohort", "--columns", "age", "--secagg",
            "--insecure", "--address", f"127.0.0.1:{free_port()}",
        ]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    assert "needs a declared range" in err and "--range COLUMN=LOW:HIGH" in err
