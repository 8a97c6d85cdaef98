"""The researcher-side optimizer (FedOpt, Scaffold server): steps the global model each round.

After aggregation, `ResearcherOptimizer.step` hands the aggregated aux vars to the optimizer's
modules, takes the pseudo-gradient `global - aggregated` and applies one declearn step to the
global parameters. `collect_aux_var_for` gives what goes to the nodes with the next train
request, and `check_optimizer_pairing` (also with no researcher optimizer at all) catches the
pairing mistakes listed in the seed page's "common pitfalls" before a round is wasted.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from declearn.optimizer.modules import AuxVar

from common.errors import ConfigurationError
from common.optimizers.optimizer import Optimizer
from common.optimizers.targets import check_same_keys

__all__ = ["ResearcherOptimizer", "check_optimizer_pairing"]

logger = logging.getLogger(__name__)

#: Suffixes of declearn module names that belong to one side of a client/server pair.
_NODE_SIDE_SUFFIX = "-client"
_RESEARCHER_SIDE_SUFFIX = "-server"


class ResearcherOptimizer:
    """Applies a fedloom Optimizer to the global model once per round."""

    def __init__(self, optimizer: Optimizer) -> None:
        if not isinstance(optimizer, Optimizer):
            raise ConfigurationError(
                f"the researcher optimizer must be common.optimizers.optimizer.Optimizer, got "
                f"{type(optimizer).__module__}.{type(optimizer).__name__}: native framework "
                "optimizers (torch.optim) only work inside training plans"
            )
        self._optimizer = optimizer

    @property
    def optimizer(self) -> Optimizer:
        """The wrapped fedloom Optimizer."""
        return self._optimizer

    def step(
        self,
        global_params: Mapping[str, np.ndarray],
        aggregated: Mapping[str, np.ndarray],
        aux: Mapping[str, AuxVar] | None,
    ) -> dict[str, np.ndarray]:
        """Return the new global parameters from this round's aggregate.

        `aux` are the nodes' aggregated aux vars (decoded as NumpyVectors). Floating-point
        parameters take one optimizer step on the pseudo-gradient `global - aggregated`,
        computed and returned in each parameter's dtype. Other parameters (integer
        counters such as BatchNorm's) take the aggregated value.
        """
        check_same_keys(global_params, aggregated, "aggregated parameters")
        self._optimizer.init_round()
        if aux:
            self._optimizer.process_aux_var(aux)
        elif self._optimizer.uses_aux_vars:
            logger.warning(
                "no aux vars this round for modules %s: their state is not updated",
                self._optimizer.aux_var_names,
            )
        floating = {
            name: np.asarray(value)
            for name, value in global_params.items()
            if np.asarray(value).dtype.kind == "f"
        }
        pseudo_grads = {
            name: np.subtract(value, aggregated[name], dtype=value.dtype)
            for name, value in floating.items()
        }
        stepped = self._optimizer.step_numpy(floating, pseudo_grads) if floating else {}
        return {
            name: stepped[name]
            if name in stepped
            else np.asarray(aggregated[name]).astype(np.asarray(value).dtype, copy=False)
            for name, value in global_params.items()
        }

    def collect_aux_var_for(self, node_ids: Iterable[str]) -> dict[str, AuxVar]:
        """Aux vars to send with the next train request to each of `node_ids`.

        declearn 2.9's server modules broadcast one value to every node (Scaffold's global
        state), so the same dict serves all of them.
        """
        nodes = list(node_ids)
        if not nodes or not self._optimizer.uses_aux_vars:
            return {}
        aux = self._optimizer.collect_aux_var()
        logger.debug("aux vars %s for nodes %s", sorted(aux), nodes)
        return aux

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Checkpointable state: (JSON-able metadata, arrays named `optim/N`)."""
        return self._optimizer.export_state(prefix="optim")

    def set_state(self, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        """Restore a state from `get_state()` (e.g. when resuming an experiment)."""
        self._optimizer.import_state(meta, arrays, vector_kind="numpy")


def check_optimizer_pairing(
    agg_optimizer: Optimizer | None,
    node_optimizer_spec: Mapping[str, Any] | None,
    native_torch: bool,
) -> list[str]:
    """Check an experiment's researcher optimizer (or None) against its plan's; return warnings.

    `node_optimizer_spec` is the plan optimizer's `to_spec()`, or None when the plan trains
    without a fedloom Optimizer (`native_torch` tells whether that is a torch.optim one).
    Raises ConfigurationError for pairings that cannot work (the seed page's pitfalls): an
    aux-var module on one side without its counterpart on the other, a module on the wrong
    side, aux vars for a native torch optimizer. Called before any round, so a mistake
    costs no training.
    """
    warnings: list[str] = []
    own: dict[str, str] = {}
    if agg_optimizer is not None:
        if agg_optimizer.regularizer_names:
            warnings.append(
                f"the researcher optimizer has regularizers {agg_optimizer.regularizer_names}: "
                "on the researcher they act on the global model's pseudo-gradient, which is "
                "rarely meant; put regularizers (e.g. FedProxRegularizer) in the training plan's "
                "optimizer"
            )
        own = agg_optimizer.aux_var_modules()
    for module in own.values():
        if module.endswith(_NODE_SIDE_SUFFIX):
            raise ConfigurationError(
                f"module {module!r} belongs in the training plan's optimizer, not the "
                f"researcher's: use its '{_RESEARCHER_SIDE_SUFFIX}' counterpart here "
                "(e.g. ScaffoldServerModule)"
            )
    if node_optimizer_spec is None:
        node: dict[str, str] = {}
        if own:
            raise ConfigurationError(_no_node_optimizer_message(own, native_torch))
    else:
        node = Optimizer.from_spec(node_optimizer_spec).aux_var_modules()
    for module in node.values():
        if module.endswith(_RESEARCHER_SIDE_SUFFIX):
            raise ConfigurationError(
                f"the training plan's optimizer has {module!r}, which belongs on the "
                f"researcher: use its '{_NODE_SIDE_SUFFIX}' counterpart in init_optimizer() "
                "(e.g. ScaffoldClientModule)"
            )
    missing_on_nodes = sorted(set(own) - set(node))
    if missing_on_nodes:
        raise ConfigurationError(
            f"the researcher optimizer's modules {[own[k] for k in missing_on_nodes]} "
            f"exchange aux vars {missing_on_nodes} but the training plan's optimizer has no "
            "counterpart: add it to init_optimizer() (e.g. modules=[ScaffoldClientModule()])"
        )
    missing_on_researcher = sorted(set(node) - set(own))
    if missing_on_researcher:
        where = (
            "the researcher optimizer has no counterpart"
            if agg_optimizer is not None
            else "the experiment has no agg_optimizer"
        )
        raise ConfigurationError(
            f"the training plan's optimizer modules {[node[k] for k in missing_on_researcher]} "
            f"exchange aux vars {missing_on_researcher} but {where}: set an agg_optimizer with "
            "the counterpart module (e.g. Optimizer(lr=1.0, modules=[ScaffoldServerModule()]))"
        )
    for message in warnings:
        logger.warning(message)
    return warnings


def _no_node_optimizer_message(own: Mapping[str, str], native_torch: bool) -> str:
    modules = sorted(own.values())
    if native_torch:
        return (
            f"the researcher optimizer's modules {modules} exchange aux vars with the nodes, "
            "but the training plan trains with a native torch.optim optimizer, which cannot: "
            "return Optimizer(lr=..., modules=[ScaffoldClientModule()]) (the counterpart "
            "module) from init_optimizer()"
        )
    return (
        f"the researcher optimizer's modules {modules} exchange aux vars with the nodes, "
        "but the training plan has no fedloom Optimizer: return one with the counterpart "
        "module (e.g. modules=[ScaffoldClientModule()]) from init_optimizer()"
    )
