"""Differential privacy shared by node and researcher.

Record-level DP-SGD on each node (`dp` type "local": config, dp_sgd, accountant, budget)
and node-level DP under SecAgg (type "node": node_level, node_update, discrete_gaussian).
Opacus (the `dp` extra) is imported only when a DP round or an ε is computed.
"""

from common.privacy.accountant import DpSteps, epsilon_spent, noise_multiplier_for
from common.privacy.budget import (
    BUDGET_SCOPES,
    DpRequired,
    LedgerView,
    PrivacyBudget,
    PrivacyBudgetExceeded,
    check_budget,
)
from common.privacy.config import ACCOUNTANTS, DP_TYPES, LocalDp, parse_dp_block
from common.privacy.discrete_gaussian import (
    distributed_zcdp_epsilon,
    sample_discrete_gaussian,
    sum_divergence_tau,
)
from common.privacy.node_level import NODE_DP_TYPE, NodeLevelDP, parse_node_dp
from common.privacy.node_update import grid_clip, privatize_update, share_sigma

__all__ = [
    "ACCOUNTANTS",
    "BUDGET_SCOPES",
    "DP_TYPES",
    "NODE_DP_TYPE",
    "DpRequired",
    "DpSteps",
    "LedgerView",
    "LocalDp",
    "NodeLevelDP",
    "PrivacyBudget",
    "PrivacyBudgetExceeded",
    "check_budget",
    "distributed_zcdp_epsilon",
    "epsilon_spent",
    "grid_clip",
    "noise_multiplier_for",
    "parse_dp_block",
    "parse_node_dp",
    "privatize_update",
    "sample_discrete_gaussian",
    "share_sigma",
    "sum_divergence_tau",
]
