"""Clear and secure aggregation, one seam: both yield the same `RoundAggregate`.

`ClearAggregation` folds each validated reply into the aggregator and the aux-var sums.
`SecureAggregation` adds each masked reply to the SecAgg sums; `finish` recovers from
dropouts, unmasks, and hands the unmasked sum to the same aggregator. After `finish`,
one global-update path (researcher/rounds/global_update.py) serves both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from declearn.optimizer.modules import AuxVar

from common.errors import ConfigurationError, PayloadError, RoundFailedError
from common.secagg import SecureAggregation as SecaggSettings
from researcher.aggregators import Aggregator
from researcher.rounds.exchange import Exchange
from researcher.rounds.reply import TrainReply
from researcher.secagg import SecureRoundSession

__all__ = [
    "ClearAggregation",
    "RoundAggregate",
    "RoundAggregation",
    "SecureAggregation",
    "check_secagg_configuration",
    "sum_aux_vars",
]


@dataclass
class RoundAggregate:
    """What a round reveals to the researcher: the aggregated parameters and aux vars."""

    params: dict[str, np.ndarray]
    aux: dict[str, AuxVar] = field(default_factory=dict)


class RoundAggregation(Protocol):
    """Folds a round's validated replies; `finish` gives the round's aggregate."""

    def add(self, reply: TrainReply) -> None:
        """Fold one reply whole, or raise a FedloomError and fold nothing."""
        ...

    def finish(self, exchange: Exchange, answered: Sequence[str], timeout: float) -> RoundAggregate:
        """The aggregate of the answered nodes (may ask them more, e.g. SecAgg recovery)."""
        ...


def sum_aux_vars(
    total: Mapping[str, AuxVar], new: Mapping[str, AuxVar], node: str
) -> dict[str, AuxVar]:
    """`total + new` key by key with declearn's rule (Scaffold: deltas summed, client sets
    united), computed aside: neither argument is changed."""
    if total and set(total) != set(new):
        raise PayloadError(
            f"node {node} sent aux vars {sorted(new)}, other nodes {sorted(total)}: every node "
            "must train with the same optimizer modules"
        )
    out = dict(total)
    for key, value in new.items():
        try:
            out[key] = value if key not in out else out[key] + value
        except (TypeError, ValueError) as exc:
            raise PayloadError(f"node {node}: cannot aggregate aux var {key!r}: {exc}") from exc
    return out


class ClearAggregation:
    """Replies in clear: parameters into the aggregator, aux vars summed."""

    def __init__(self, aggregator: Aggregator, template: Mapping[str, np.ndarray]) -> None:
        self._aggregator = aggregator
        self._aux: dict[str, AuxVar] = {}
        aggregator.start(template)

    def add(self, reply: TrainReply) -> None:
        aux = sum_aux_vars(self._aux, reply.aux, reply.node_id)
        self._aggregator.add(reply.node_id, reply.params, float(reply.n_samples))
        self._aux = aux

    def finish(self, exchange: Exchange, answered: Sequence[str], timeout: float) -> RoundAggregate:
        return RoundAggregate(self._aggregator.finish(), self._aux)


class SecureAggregation:
    """Masked replies: kept by the SecAgg session, unmasked once, then the same aggregator."""

    def __init__(
        self,
        session: SecureRoundSession,
        aggregator: Aggregator,
        template: Mapping[str, np.ndarray],
    ) -> None:
        self._session = session
        self._aggregator = aggregator
        self._template = template
        aggregator.start(template)

    def add(self, reply: TrainReply) -> None:
        # The session checks the masked part whole and keeps it; it folds only the nodes
        # `finish` is told answered, so a reply the aggregator then refuses leaves no trace.
        self._session.add_masked(reply.node_id, reply.sections, reply.aux_message)
        if not self._session.settings.protect_parameters:
            self._aggregator.add(reply.node_id, reply.params, float(reply.n_samples))

    def finish(self, exchange: Exchange, answered: Sequence[str], timeout: float) -> RoundAggregate:
        dtypes = {k: np.asarray(v).dtype for k, v in self._template.items()}
        result = self._session.unmask(exchange, answered, timeout, dtypes=dtypes)
        if result.param_sums is not None:
            if result.total_samples is None or not result.total_samples > 0:
                raise RoundFailedError(
                    f"the securely summed sample count is {result.total_samples}; expected > 0"
                )
            self._aggregator.add_secure_sum(result.param_sums, result.total_samples)
        return RoundAggregate(self._aggregator.finish(), result.aux)


def check_secagg_configuration(settings: SecaggSettings, aggregator: Aggregator) -> None:
    """Protected parameters reach the aggregator only as a sum: it must be able to use one."""
    if settings.protect_parameters and not aggregator.supports_secure_sum:
        raise ConfigurationError(
            f"SecAgg with protected parameters reveals only the sum of the nodes' updates, which "
            f"the {type(aggregator).__name__} aggregator cannot use: choose an aggregator that "
            "supports secure sums (FedAverage) or SecureAggregation(protect_parameters=False) "
            "(TOML: secagg = {protect_parameters = false}), which protects the aux vars only "
            "and shows the researcher each node's parameters"
        )
