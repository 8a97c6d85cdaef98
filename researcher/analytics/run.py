"""`cohort_statistics`: ask every node holding the tags for its sufficient statistics and pool them.

Tasks travel through the round engine's exchange (``GrpcExchange.run_tasks``) on the
researcher's gRPC server, started like ``researcher run`` does (``get_server``). Under SecAgg
the statistics are masked in a double-masking session (``SecureRoundSession``: key adverts
and shares, masked answers, consistency check, unmask) and the researcher only ever holds
the unmasked sum over the nodes.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence

import numpy as np

from common.analytics import AnalyticsQuery, HistogramSpec, ValueRange
from common.errors import AnalyticsError, NoMatchingNodesError, RoundFailedError
from common.proto import fedloom_pb2 as pb
from common.secagg import SecureAggregation
from common.secagg.protect import mask_label
from researcher.analytics.pooling import pool_clear, pool_secure
from researcher.analytics.result import CohortStatistics, build_statistics
from researcher.rounds.exchange import Exchange, GrpcExchange, NodeView, ReceivedReply
from researcher.run_options import RunOptions
from researcher.secagg import Participant, SecureRoundSession
from researcher.server import get_server

__all__ = [
    "ANALYTICS_CLIP",
    "ANALYTICS_FRACTION_BITS",
    "cohort_statistics",
    "run_query",
    "secure_settings",
]

log = logging.getLogger(__name__)

#: Largest masked value under SecAgg: every statistic is a count or a sum of values rescaled
#: into [0, 1], so none exceeds a node's row count; 2^24 (16.7 M rows per node) covers any
#: clinical table while leaving ring room for 2^63 / (2^24 * 2^30) = 512 nodes.
ANALYTICS_CLIP = float(2**24)
#: Fixed-point precision: a value error of 2^-31 in [0, 1] units, i.e. a mean off by at most
#: (nodes * 2^-31 / count) of the declared range.
ANALYTICS_FRACTION_BITS = 30


def secure_settings() -> SecureAggregation:
    """The SecAgg settings of a statistics query (sums only: nothing is a model parameter)."""
    return SecureAggregation(
        clip=ANALYTICS_CLIP, fraction_bits=ANALYTICS_FRACTION_BITS, protect_parameters=False
    )


def _as_specs(
    histograms: Sequence[HistogramSpec | str], ranges: Sequence[ValueRange | str]
) -> tuple[tuple[HistogramSpec, ...], tuple[ValueRange, ...]]:
    return (
        tuple(h if isinstance(h, HistogramSpec) else HistogramSpec.parse(h) for h in histograms),
        tuple(r if isinstance(r, ValueRange) else ValueRange.parse(r) for r in ranges),
    )


def _check_quantiles(quantiles: Sequence[float], query: AnalyticsQuery) -> None:
    bad = [q for q in quantiles if not 0.0 <= q <= 1.0]
    if bad:
        raise AnalyticsError(f"quantiles must lie in [0, 1], got {bad}")
    if quantiles and not query.histograms:
        raise AnalyticsError(
            "quantiles are read off histograms: add a histogram over the columns you want "
            "quantiles of, e.g. --histogram age=0:100:20"
        )


def cohort_statistics(
    *,
    tags: Sequence[str],
    columns: Sequence[str],
    histograms: Sequence[HistogramSpec | str] = (),
    quantiles: Sequence[float] = (),
    correlation: bool = False,
    ranges: Sequence[ValueRange | str] = (),
    secagg: bool = False,
    min_nodes: int = 1,
    wait: float = 60.0,
    timeout: float = 120.0,
    options: RunOptions | None = None,
) -> CohortStatistics:
    """Pooled statistics of ``columns`` over every connected node holding ``tags``.

    - ``histograms``: ``HistogramSpec`` or ``"COLUMN=LOW:HIGH:BINS"``; ``quantiles`` are read
      off them (within one bin width).
    - ``ranges``: ``ValueRange`` or ``"COLUMN=LOW:HIGH"``; under ``secagg`` every column needs
      one (a histogram's span serves too): values are clipped into it before summing.
    - waits up to ``wait`` seconds for ``min_nodes`` matching nodes, then up to ``timeout``
      seconds for their answers; nodes that refuse are listed in ``failures``.
    - ``options``: address and TLS of the researcher server (default: the process's).
    """
    hist_specs, range_specs = _as_specs(histograms, ranges)
    query = AnalyticsQuery(tuple(columns), hist_specs, correlation, range_specs)
    _check_quantiles(quantiles, query)
    if secagg:
        query.require_ranges()
    server = get_server(options)
    return run_query(
        GrpcExchange(server),
        query,
        tags=tags,
        quantiles=quantiles,
        secagg=secagg,
        min_nodes=min_nodes,
        wait=wait,
        timeout=timeout,
    )


def _matching(exchange: Exchange, tags: Sequence[str]) -> list[NodeView]:
    return sorted(
        (n for n in exchange.connected() if n.matching_dataset(tags) is not None),
        key=lambda n: n.node_id,
    )


def run_query(
    exchange: Exchange,
    query: AnalyticsQuery,
    *,
    tags: Sequence[str],
    quantiles: Sequence[float] = (),
    secagg: bool = False,
    min_nodes: int = 1,
    wait: float = 60.0,
    timeout: float = 120.0,
) -> CohortStatistics:
    """Run ``query`` over the nodes of ``exchange`` that hold ``tags`` (see cohort_statistics)."""
    if not tags:
        raise AnalyticsError("name the datasets' tags, e.g. --tags '#cohort'")
    needed = max(min_nodes, 2 if secagg else 1)
    exchange.wait_until(lambda: len(_matching(exchange, tags)) >= needed, wait)
    nodes = _matching(exchange, tags)
    if len(nodes) < needed:
        raise NoMatchingNodesError(
            f"{len(nodes)} connected node(s) hold a dataset with tags {list(tags)} after waiting "
            f"{wait:g} s, {needed} needed"
            + (" (SecAgg sums over at least 2 nodes)" if secagg else "")
            + ": start more nodes, check their tags, or wait longer"
        )
    labels = {n.node_id: n.label for n in nodes}
    requests = {}
    for node in nodes:
        dataset = node.matching_dataset(tags)
        assert dataset is not None  # _matching kept only nodes holding the tags
        requests[node.node_id] = query.to_request(dataset.name)
    experiment_id = f"analytics-{uuid.uuid4().hex[:12]}"
    log.info(
        "cohort statistics of %s over %d node(s)%s",
        list(query.columns),
        len(nodes),
        " under SecAgg" if secagg else "",
    )
    if secagg:
        sums, answered, failures = _secure_exchange(
            exchange, requests, labels, experiment_id, timeout
        )
        moments = pool_secure(sums, query)
    else:
        answers, failures = _clear_exchange(exchange, requests, labels, experiment_id, timeout)
        if not answers:
            raise AnalyticsError(
                "no node answered the statistics query: "
                + "; ".join(f"{node}: {why}" for node, why in sorted(failures.items()))
            )
        answered = list(answers)
        moments = pool_clear(answers, query)
    return build_statistics(
        moments,
        query,
        tags=tags,
        nodes=sorted(answered),
        quantiles=quantiles,
        secagg=secagg,
        failures=failures,
        sum_error=secure_settings().sum_error_bound(len(nodes)) if secagg else 0.0,
    )


def _task(experiment_id: str, timeout: float, request: pb.AnalyticsRequest) -> pb.TaskRequest:
    return pb.TaskRequest(
        task_id=uuid.uuid4().hex,
        experiment_id=experiment_id,
        round=1,
        timeout_seconds=timeout,
        analytics=request,
    )


def _clear_exchange(
    exchange: Exchange,
    requests: Mapping[str, pb.AnalyticsRequest],
    labels: Mapping[str, str],
    experiment_id: str,
    timeout: float,
) -> tuple[dict[str, Mapping[str, np.ndarray]], dict[str, str]]:
    tasks = {node: _task(experiment_id, timeout, request) for node, request in requests.items()}
    result = exchange.run_tasks(tasks, timeout)
    answers = {labels[node]: reply.arrays for node, reply in result.replies.items()}
    failures = {labels.get(node, node): why for node, why in result.failures.items()}
    return answers, failures


def _secure_exchange(
    exchange: Exchange,
    requests: Mapping[str, pb.AnalyticsRequest],
    labels: Mapping[str, str],
    experiment_id: str,
    timeout: float,
) -> tuple[dict[str, np.ndarray], list[str], dict[str, str]]:
    """Sums over the nodes, unmasked by the double-masking session; no node's own values."""
    session = SecureRoundSession(
        secure_settings(),
        experiment_id,
        1,
        [Participant(node, labels[node]) for node in requests],
    )
    holders = session.setup(exchange, timeout)
    tasks = {}
    for node in holders:
        request = pb.AnalyticsRequest()
        request.CopyFrom(requests[node])
        request.secagg.CopyFrom(session.train_context(node))
        tasks[node] = _task(experiment_id, timeout, request)

    def keep_masked(received: ReceivedReply) -> None:
        # Validated whole by the session and kept masked; folded only at unmasking.
        session.add_masked(received.node_id, received.sections, pb.AuxVars())

    result = exchange.run_tasks(tasks, timeout, on_reply=keep_masked)
    failures = {labels.get(node, node): why for node, why in result.failures.items()}
    for node in requests:
        if node not in holders and node not in result.answered:
            failures.setdefault(labels[node], "dropped out of the SecAgg setup")
    try:
        unmasked = session.unmask(exchange, result.answered, timeout)
    except RoundFailedError as exc:
        # The session knows who is missing; the nodes' own reasons are here.
        reasons = "; ".join(f"{node}: {why}" for node, why in sorted(failures.items()))
        raise AnalyticsError(f"{exc} Node answers: {reasons or 'none failed'}") from exc
    prefix = mask_label(pb.PAYLOAD_SECTION_SECAGG_SUMS, "")
    sums = {label.removeprefix(prefix): total for label, total in unmasked.sums.items()}
    return sums, [labels[n] for n in result.answered], failures
