"""Differential privacy shared by node and researcher (node-level DP under SecAgg here)."""

from common.privacy.discrete_gaussian import (
    distributed_zcdp_epsilon,
    sample_discrete_gaussian,
    sum_divergence_tau,
)
from common.privacy.node_level import NODE_DP_TYPE, NodeLevelDP, parse_node_dp
from common.privacy.node_update import grid_clip, privatize_update, share_sigma

__all__ = [
    "NODE_DP_TYPE",
    "NodeLevelDP",
    "distributed_zcdp_epsilon",
    "grid_clip",
    "parse_node_dp",
    "privatize_update",
    "sample_discrete_gaussian",
    "share_sigma",
    "sum_divergence_tau",
]
