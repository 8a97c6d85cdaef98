"""The node-level DP accountant: (ε, δ) per round and cumulative, with Opacus's RDP analysis.

Each round is one subsampled Gaussian mechanism on the set of eligible nodes: sample rate
``q = selected / eligible`` (the strategy's selection; 1 when every eligible node trains)
and an effective noise multiplier ``z_eff = 1 / eps``, where ``(1/2) eps^2``-zCDP is the
KLS21 guarantee of the round's distributed discrete Gaussian
(:func:`common.privacy.distributed_zcdp_epsilon`) with the noise that was actually added:
``survivors`` shares of variance ``(z C 2^f)^2 / noise_shares``. Without dropouts (or with
at least ``min_survivors`` survivors) and with the fixed-point scales SecAgg uses,
``z_eff = z``; after dropouts it is smaller and the round is charged for it. RDP orders add
up over rounds (Opacus's ``compute_rdp``) and convert to (ε, δ) with ``get_privacy_spent``.

Two things are approximations, stated rather than hidden: the RDP of a *subsampled* discrete
Gaussian is taken to be that of the subsampled continuous Gaussian with the same zCDP
parameter (KLS21 do the same); at q = 1 no subsampling is involved and the bound is exact.
And Opacus analyses Poisson sampling, while strategies pick a fixed number of nodes.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from common.errors import ConfigurationError
from common.privacy import NodeLevelDP, distributed_zcdp_epsilon, share_sigma

__all__ = [
    "RDP_ORDERS",
    "NodeDPRound",
    "cumulative_epsilon",
    "epsilon_of_rdp",
    "resolve_noise_multiplier",
    "round_noise_multiplier",
    "round_rdp",
]


#: Rényi orders of the analysis: Opacus's RDPAccountant defaults.
RDP_ORDERS: list[float] = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))


@dataclass(frozen=True)
class NodeDPRound:
    """One round's node-level DP record (metrics.jsonl keys are these, prefixed ``node_dp_``)."""

    sample_rate: float
    noise_multiplier: float
    survivors: int
    noise_shares: int
    delta: float
    round_epsilon: float
    epsilon: float

    def to_dict(self) -> dict[str, Any]:
        return {f"node_dp_{k}": v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> NodeDPRound:
        prefix = "node_dp_"
        return cls(**{k[len(prefix) :]: v for k, v in row.items() if k.startswith(prefix)})


def round_noise_multiplier(
    dp: NodeLevelDP, *, survivors: int, noise_shares: int, dimension: int, fraction_bits: int
) -> float:
    """The round's effective noise multiplier: 1 / (its KLS21 zCDP ε)."""
    sensitivity = math.ldexp(dp.clip, fraction_bits)
    eps = distributed_zcdp_epsilon(
        sensitivity, share_sigma(dp, noise_shares, fraction_bits), survivors, dimension
    )
    return 1.0 / eps


def round_rdp(sample_rate: float, noise_multiplier: float) -> np.ndarray:
    """One round's RDP at :data:`RDP_ORDERS` (Opacus's ``compute_rdp``, cached: it is slow,
    ~0.1 s, for sample rates below 1, and rounds repeat the same pair)."""
    return np.array(_round_rdp(float(sample_rate), float(noise_multiplier)))


@functools.lru_cache(maxsize=256)
def _round_rdp(sample_rate: float, noise_multiplier: float) -> tuple[float, ...]:
    from opacus.accountants.analysis.rdp import compute_rdp

    rdp = compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=RDP_ORDERS)
    return tuple(float(v) for v in np.atleast_1d(rdp))


def epsilon_of_rdp(rdp: np.ndarray, delta: float) -> float:
    """The ε at ``delta`` of an RDP curve over :data:`RDP_ORDERS` (Opacus's conversion)."""
    from opacus.accountants.analysis.rdp import get_privacy_spent

    epsilon, _ = get_privacy_spent(orders=RDP_ORDERS, rdp=rdp, delta=delta)
    return float(epsilon)


def cumulative_epsilon(rounds: Sequence[tuple[float, float]], delta: float) -> float:
    """ε at ``delta`` after ``rounds`` of (sample rate, noise multiplier): RDP adds up."""
    if not rounds:
        return 0.0
    total = np.zeros(len(RDP_ORDERS))
    for (sample_rate, noise_multiplier), steps in Counter(rounds).items():
        total += steps * round_rdp(sample_rate, noise_multiplier)
    return epsilon_of_rdp(total, delta)


def resolve_noise_multiplier(dp: NodeLevelDP, rounds: int | None) -> NodeLevelDP:
    """``dp`` with z resolved from target_epsilon over ``rounds`` rounds at sample rate 1.

    Sample rate 1 is the worst case: with node sampling the same z gives a smaller ε.
    """
    if dp.target_epsilon is None:
        return dp
    if rounds is None:
        raise ConfigurationError(
            "training_args['dp'] gives target_epsilon: set a round limit (set_round_limit(n) "
            "or [experiment] rounds) so the noise multiplier can be chosen for it"
        )
    from opacus.accountants.utils import get_noise_multiplier

    z = get_noise_multiplier(
        target_epsilon=dp.target_epsilon,
        target_delta=dp.delta,
        sample_rate=1.0,
        steps=rounds,
        accountant="rdp",
    )
    return dp.with_noise_multiplier(float(z))
