"""The researcher's side of differential privacy: node-level DP checks and accountant."""

from researcher.privacy.accountant import (
    NodeDPRound,
    cumulative_epsilon,
    resolve_noise_multiplier,
    round_noise_multiplier,
)
from researcher.privacy.node_dp import NodeDPAccountant, check_node_dp_setup, node_dp_setup

__all__ = [
    "NodeDPAccountant",
    "NodeDPRound",
    "check_node_dp_setup",
    "cumulative_epsilon",
    "node_dp_setup",
    "resolve_noise_multiplier",
    "round_noise_multiplier",
]
