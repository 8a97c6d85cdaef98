"""Cohort statistics over real node processes on loopback: clear and SecAgg results equal the
pooled numpy computation, SecAgg hides each node's statistics from the researcher, nodes
refuse unknown or text columns and cohorts below their minimum, and the CLI prints both
formats."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from common.analytics import secure_sums
from common.errors import AnalyticsError
from common.proto import fedloom_pb2 as pb
from common.secagg import FixedPoint
from researcher.analytics import (
    ANALYTICS_CLIP,
    ANALYTICS_FRACTION_BITS,
    AnalyticsQuery,
    CohortStatistics,
    HistogramSpec,
    ValueRange,
    cohort_statistics,
    run_query,
)
from researcher.rounds.exchange import ExchangeResult, GrpcExchange, NodeView, ReceivedReply
from researcher.server import get_server
from tests.analytics_data import NUMERIC, cohort_table, write_cohort
from tests.conftest import (
    TLS_NODE_IDS,
    TlsResearcher,
    free_port,
    run_fedloom,
    tls_args,
    wait_for_nodes,
)

pytestmark = pytest.mark.slow

TAGS = ["#cohort"]
#: Rows per node: uneven, every one above the default minimum cohort of 10.
ROWS = (40, 75, 23)


def _write_tables(tmp_path: Path, count: int) -> list[tuple[str, pd.DataFrame, Path]]:
    out = []
    for index in range(count):
        table = cohort_table(index + 11, ROWS[index])
        name = TLS_NODE_IDS[index]
        out.append((name, table, write_cohort(tmp_path / "data" / f"{name}.csv", table)))
    return out


def _pooled(tables: Sequence[pd.DataFrame]) -> np.ndarray:
    return np.concatenate([t[list(NUMERIC)].to_numpy(dtype=float) for t in tables])


def _assert_equals_numpy(stats: CohortStatistics, data: np.ndarray, rtol: float) -> None:
    for index, name in enumerate(NUMERIC):
        column = data[:, index]
        present = column[~np.isnan(column)]
        got = stats.columns[name]
        assert (got.count, got.missing) == (present.size, column.size - present.size)
        assert got.mean == pytest.approx(np.mean(present), rel=rtol)
        assert got.variance == pytest.approx(np.var(present, ddof=1), rel=rtol)
    complete = data[~np.isnan(data).any(axis=1)]
    assert stats.correlation is not None and stats.correlation.rows == len(complete)
    np.testing.assert_allclose(
        stats.correlation.matrix, np.corrcoef(complete.T), rtol=rtol, atol=rtol
    )
    ages = data[:, 0]
    histogram = stats.columns["age"].histogram
    assert histogram is not None
    assert histogram.counts == np.histogram(ages, bins=np.linspace(0, 100, 21))[0].tolist()
    for q, value in stats.columns["age"].quantiles.items():
        assert value is not None
        assert abs(value - np.quantile(ages, q, method="inverted_cdf")) <= 5.0  # one bin


class RecordingExchange:
    """The researcher's whole view: every reply that reaches it over gRPC, copied."""

    def __init__(self, inner: GrpcExchange) -> None:
        self.inner = inner
        self.seen: list[tuple[str, pb.TaskReply, dict[int, dict[str, np.ndarray]]]] = []

    @property
    def address(self) -> str:
        return self.inner.address

    def connected(self) -> list[NodeView]:
        return self.inner.connected()

    def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        return self.inner.wait_until(predicate, timeout)

    def publish(self, payload: Any, node_ids: Sequence[str]) -> str:
        return self.inner.publish(payload, node_ids)

    def unpublish(self, payload_id: str) -> None:
        self.inner.unpublish(payload_id)

    def _record(self, received: ReceivedReply) -> None:
        sections = {
            int(section): {name: np.array(array) for name, array in arrays.items()}
            for section, arrays in received.sections.items()
        }
        self.seen.append((received.node_id, received.reply, sections))

    def run_tasks(
        self,
        tasks: Mapping[str, pb.TaskRequest],
        timeout: float,
        on_reply: Callable[[ReceivedReply], None] | None = None,
    ) -> ExchangeResult:
        def record_then(received: ReceivedReply) -> None:
            self._record(received)
            if on_reply is not None:
                on_reply(received)

        result = self.inner.run_tasks(tasks, timeout, record_then if on_reply else None)
        for received in result.replies.values():
            self._record(received)
        return result


def test_statistics_equal_pooled_numpy_in_clear_and_under_secagg_which_hides_each_node(
    tmp_path: Path, tls_researcher: TlsResearcher, start_node: Any
) -> None:
    nodes = _write_tables(tmp_path, 3)
    for name, _table, path in nodes:
        start_node(
            name,
            datasets=[("cohort", TAGS, path, None)],
            node_id=name,
            insecure=False,
            extra_args=tls_args(tls_researcher.certs.node(name)),
        )
    wait_for_nodes(3)
    data = _pooled([table for _name, table, _path in nodes])
    options: dict[str, Any] = {
        "tags": TAGS,
        "columns": NUMERIC,
        "histograms": ["age=0:100:20", "bmi=0:60:30"],
        "quantiles": [0.25, 0.5, 0.75],
        "correlation": True,
        "min_nodes": 3,
    }

    clear = cohort_statistics(**options)
    assert clear.nodes == sorted(n.label for n in get_server().directory.connected())
    _assert_equals_numpy(clear, data, rtol=1e-12)
    assert clear.columns["age"].min == np.nanmin(data[:, 0])

    # SecAgg, seen from the researcher: it records every reply that arrives.
    exchange = RecordingExchange(GrpcExchange(get_server()))
    query = AnalyticsQuery(
        NUMERIC,
        (HistogramSpec("age", 0, 100, 20), HistogramSpec("bmi", 0, 60, 30)),
        True,
        (ValueRange("sbp", 0, 400),),
    )
    secure = run_query(exchange, query, tags=TAGS, quantiles=[0.25, 0.5, 0.75], secagg=True)
    # Fixed point: each sum is within nodes * 2^-31 of exact in [0, 1] units; relative 1e-7
    # leaves room for the cancellation in the variance.
    _assert_equals_numpy(secure, data, rtol=1e-7)
    assert secure.secagg and len(secure.nodes) == 3
    assert (secure.columns["sbp"].min, secure.columns["sbp"].max) == (0.0, 400.0)
    assert secure.columns["sbp"].min_max.startswith("declared range")
    assert [secure.columns[c].clipped for c in NUMERIC] == [0, 0, 0]

    codec = FixedPoint(ANALYTICS_CLIP, ANALYTICS_FRACTION_BITS)
    own = {
        name: {
            k: codec.encode(v, node_id=name, name=k)
            for k, v in secure_sums(table[list(NUMERIC)].to_numpy(dtype=float), query).items()
        }
        for name, table, _path in nodes
    }
    uploads = {}
    for node, reply, sections in exchange.seen:
        assert reply.n_samples == 0  # no count in clear
        assert not sections.get(pb.PAYLOAD_SECTION_UNSPECIFIED)  # nothing in clear
        masked = sections.get(pb.PAYLOAD_SECTION_SECAGG_SUMS)
        if masked:
            uploads[node] = masked
    assert set(uploads) == set(own)
    for node, masked in uploads.items():
        assert set(masked) == set(own[node])
        for name, array in masked.items():
            # Not the node's encoded statistic anywhere: each value carries a uniform mask.
            assert array.dtype == np.uint64
            assert not np.any(array == own[node][name]), (node, name)
    # Two nodes' uploads together still hide their sum: the self masks only cancel through
    # the unmask phase, which reveals the sum over all survivors.
    first, second = sorted(uploads)[:2]
    pair = uploads[first]["n"] + uploads[second]["n"]
    assert not np.any(pair == own[first]["n"] + own[second]["n"])


def test_nodes_refuse_unknown_and_text_columns_and_cohorts_below_their_minimum(
    tmp_path: Path, researcher_address: str, start_node: Any
) -> None:
    (a, table_a, path_a), (b, _table_b, path_b) = _write_tables(tmp_path, 2)
    node_a = start_node(a, datasets=[("cohort", TAGS, path_a, None)])
    node_b = start_node(b, datasets=[("cohort", TAGS, path_b, None)])
    # The operator of node b raises its threshold above its 75 rows, from the node CLI.
    done = run_fedloom(
        "node", "--home", str(node_b.home), "dataset", "min-cohort", "cohort", "100", timeout=180
    )
    assert done.returncode == 0, done.stderr
    assert "refused below 100" in done.stdout
    wait_for_nodes(2)

    stats = cohort_statistics(tags=TAGS, columns=["age"], min_nodes=2)
    (label_b,) = [label for label in stats.failures]
    assert b in label_b and len(stats.nodes) == 1 and a in stats.nodes[0]
    reason = stats.failures[label_b]
    assert "minimum cohort size of 100" in reason
    assert f"fedloom node --home {node_b.home} dataset min-cohort cohort N" in reason
    assert stats.columns["age"].mean == pytest.approx(table_a["age"].mean(), rel=1e-12)
    # Under SecAgg a sum over the one node left would be that node's: the query fails, and
    # says why the other node stayed out.
    with pytest.raises(
        AnalyticsError, match=r"below the threshold t=2.*minimum cohort size of 100"
    ):
        cohort_statistics(
            tags=TAGS, columns=["age"], ranges=["age=0:100"], secagg=True, min_nodes=2
        )

    with pytest.raises(
        AnalyticsError, match=r"no column 'weight'; its numeric columns are 'age', 'bmi', 'sbp'"
    ):
        cohort_statistics(tags=TAGS, columns=["age", "weight"], min_nodes=2)
    with pytest.raises(AnalyticsError, match=r"column 'sex' of dataset 'cohort' is not numeric"):
        cohort_statistics(tags=TAGS, columns=["sex"], min_nodes=2)
    assert node_a.proc.poll() is None and node_b.proc.poll() is None  # refusals cost no node


def test_cli_prints_a_table_and_json(tmp_path: Path, start_node: Any) -> None:
    address = f"127.0.0.1:{free_port()}"
    nodes = _write_tables(tmp_path, 2)
    for name, _table, path in nodes:
        start_node(name, datasets=[("cohort", TAGS, path, None)], address=address)
    data = _pooled([table for _name, table, _path in nodes])
    flags = [
        "researcher", "analytics", "--tags", "#cohort", "--columns", "age,bmi",
        "--histogram", "age=0:100:10", "--quantiles", "0.5", "--correlation",
        "--nodes", "2", "--address", address, "--insecure",
    ]  # fmt: skip
    table = run_fedloom(*flags, timeout=180)
    assert table.returncode == 0, table.stderr
    assert "cohort statistics over 2 node(s) with tags #cohort" in table.stdout
    assert "histogram of age" in table.stdout and "correlation over" in table.stdout
    assert f"{np.nanmean(data[:, 0]):.6g}" in table.stdout

    done = run_fedloom(*flags, "--secagg", "--range", "bmi=0:60", "--format", "json", timeout=180)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["secagg"] is True and len(result["nodes"]) == 2
    age = result["columns"]["age"]
    assert age["mean"] == pytest.approx(np.nanmean(data[:, 0]), rel=1e-7)
    assert (age["min"], age["max"]) == (0.0, 100.0)
    assert set(age["quantiles"]) == {"0.5"}
    assert result["correlation"]["columns"] == ["age", "bmi"]
