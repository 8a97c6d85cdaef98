"""Node-level DP on the researcher: refuse setups that would void it, and account each round.

Node-level DP is refused without SecAgg protecting the parameters: the researcher would
then see each node's update with only its 1/n share of the noise. The aggregator must
work from the secure sum (FedAverage); node weights are uniform (each node uploads weight
1) and the sum is divided by the survivors' count, which the researcher knows anyway: any
denominator independent of the data is post-processing, and the survivors' count keeps
the update an unbiased mean when nodes drop (a fixed denominator would shrink it).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from common.errors import ConfigurationError
from common.privacy import NodeLevelDP
from common.privacy.node_update import TAIL_SIGMAS
from common.secagg import SecureAggregation
from common.training_args import TrainingArgs
from researcher.privacy.accountant import (
    RDP_ORDERS,
    NodeDPRound,
    epsilon_of_rdp,
    resolve_noise_multiplier,
    round_noise_multiplier,
    round_rdp,
)

__all__ = ["NodeDPAccountant", "check_node_dp_setup", "node_dp_setup"]


def check_node_dp_setup(
    dp: NodeLevelDP,
    secagg: SecureAggregation | None,
    supports_secure_sum: bool,
    aux_modules: Iterable[str],
) -> None:
    """ConfigurationError unless SecAgg, the aggregator and the optimizer suit node-level DP."""
    if secagg is None or not secagg.protect_parameters:
        raise ConfigurationError(
            "node-level DP (training_args['dp'] type 'node') needs SecAgg protecting the "
            "parameters: without it the researcher sees each node's update with only its "
            "share of the noise. Set Experiment(secagg=True) (or [secagg] in the config)."
        )
    if not supports_secure_sum:
        raise ConfigurationError(
            "node-level DP works from the secure sum of the updates: use the FedAverage aggregator"
        )
    aux = sorted(aux_modules)
    if aux:
        raise ConfigurationError(
            f"node-level DP covers the model update only; the optimizer modules {aux} send aux "
            "vars (e.g. Scaffold) that would travel without noise: drop them"
        )
    needed = dp.clip * (1.0 + TAIL_SIGMAS * dp.z)
    if secagg.clip < needed:
        raise ConfigurationError(
            f"SecAgg clip {secagg.clip:g} leaves no room for node-level DP noise: a node's "
            f"value is its global parameter plus up to clip + {TAIL_SIGMAS:g} sigma = "
            f"{needed:g}; raise SecureAggregation(clip=...) above max|parameter| + {needed:g}"
        )


class NodeDPAccountant:
    """Charges each round's node-level DP and keeps the experiment's cumulative ε."""

    def __init__(
        self, dp: NodeLevelDP, fraction_bits: int, past: Iterable[NodeDPRound] = ()
    ) -> None:
        self.dp = dp
        self.fraction_bits = fraction_bits
        self._rdp = np.zeros(len(RDP_ORDERS))
        for record in past:
            self._rdp += round_rdp(record.sample_rate, record.noise_multiplier)

    def charge(
        self, *, eligible: int, participants: int, survivors: int, dimension: int
    ) -> NodeDPRound:
        """Record a round of ``participants`` selected among ``eligible`` nodes, ``survivors``
        of whom were summed; returns its record with the cumulative ε."""
        shares = self.dp.noise_shares(participants)
        z_eff = round_noise_multiplier(
            self.dp,
            survivors=survivors,
            noise_shares=shares,
            dimension=dimension,
            fraction_bits=self.fraction_bits,
        )
        sample_rate = min(1.0, participants / eligible)
        delta = self.dp.delta
        rdp = round_rdp(sample_rate, z_eff)
        self._rdp += rdp
        return NodeDPRound(
            sample_rate=sample_rate,
            noise_multiplier=z_eff,
            survivors=survivors,
            noise_shares=shares,
            delta=delta,
            round_epsilon=epsilon_of_rdp(rdp, delta),
            epsilon=epsilon_of_rdp(self._rdp, delta),
        )

    @staticmethod
    def past_rounds(records: Iterable[Any]) -> list[NodeDPRound]:
        """The node-DP records of completed rounds (RoundRecords without one are skipped)."""
        return [r.node_dp for r in records if getattr(r, "node_dp", None) is not None]


def node_dp_setup(
    training_args: TrainingArgs,
    secagg: SecureAggregation | None,
    *,
    supports_secure_sum: bool,
    aux_modules: Iterable[str],
    round_limit: int | None,
    history: Iterable[Any],
) -> tuple[TrainingArgs, NodeDPAccountant | None]:
    """The training args the nodes get (z resolved) and the run's accountant (None without
    node-level DP); ConfigurationError when the setup would void the guarantee."""
    dp = training_args.node_dp
    if dp is None:
        return training_args, None
    dp = resolve_noise_multiplier(dp, round_limit)
    check_node_dp_setup(dp, secagg, supports_secure_sum, aux_modules)
    assert secagg is not None  # checked just above
    accountant = NodeDPAccountant(dp, secagg.fraction_bits, NodeDPAccountant.past_rounds(history))
    return training_args.replace(dp=dp.to_dict()), accountant
