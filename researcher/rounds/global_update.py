"""The one global-update path: a round's aggregate and the server optimizer give the new model.

Clear and secure rounds both end here with the same `RoundAggregate`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import numpy as np

from researcher.optimization import ResearcherOptimizer
from researcher.rounds.aggregation import RoundAggregate

__all__ = ["global_update"]


def global_update(
    global_params: Mapping[str, np.ndarray],
    aggregate: RoundAggregate,
    optimizer: ResearcherOptimizer | None,
    trainable: Collection[str],
) -> dict[str, np.ndarray]:
    """The new global parameters after a round.

    Without a server optimizer the aggregate is the new model. With one (FedOpt, Scaffold
    server), it first takes the aggregated aux vars, then steps the trainable parameters on
    the pseudo-gradient `global - aggregated`; other parameters (buffers such as BatchNorm's
    running statistics) take the aggregated value.
    """
    if optimizer is None:
        return aggregate.params
    names = set(trainable)
    g_train = {k: v for k, v in global_params.items() if k in names}
    a_train = {k: v for k, v in aggregate.params.items() if k in names}
    stepped = optimizer.step(g_train, a_train, aggregate.aux or None)
    return {k: (stepped[k] if k in names else v) for k, v in aggregate.params.items()}
