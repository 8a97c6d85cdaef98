"""The experiment's state, one object: configuration and progress, checkpointed as a whole.

`ExperimentState` holds everything a run needs and a resume restores: the configuration
(tags, plan, training arguments, aggregator, strategy, optimizers, SecAgg) and the progress
(round, global parameters, server-optimizer state, history). `to_checkpoint` and
`from_checkpoint` are its only way to and from disk (researcher/checkpoint.py writes the
files atomically).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import ConfigurationError
from common.optimizers.optimizer import Optimizer
from common.secagg import SecureAggregation
from common.training_args import TrainingArgs
from common.training_plans.base import BaseTrainingPlan
from researcher.aggregators import Aggregator, FedAverage, aggregator_from_state
from researcher.checkpoint import DEFAULT_KEEP_CHECKPOINTS, Checkpoint, split_arrays
from researcher.history import RoundRecord
from researcher.optimization import ResearcherOptimizer
from researcher.plan_probe import PlanDetails, PlanFile, plan_file_for_source
from researcher.rounds.round import PlanInfo
from researcher.strategies import DefaultStrategy, Strategy, strategy_from_state

__all__ = ["ExperimentState"]

log = logging.getLogger(__name__)

#: Prefix of the global parameters' names among a checkpoint's arrays.
PARAM_PREFIX = "param"
#: Prefix of the researcher optimizer's arrays (`ResearcherOptimizer.get_state`).
OPTIM_PREFIX = "optim"


@dataclass
class ExperimentState:
    """Everything an experiment is and has done; what a checkpoint saves and restores."""

    experiment_id: str
    tags: list[str] = field(default_factory=list)
    nodes: list[str] | None = None
    # The plan: a class imported in this process, or a file probed in a child process
    # (researcher/plan_probe.py) so that this process never imports torch.
    plan_class: type[BaseTrainingPlan] | None = None
    plan_file: PlanFile | None = None
    plan: PlanInfo | None = None
    plan_details: PlanDetails | None = None
    training_args: TrainingArgs = field(default_factory=TrainingArgs)
    model_args: dict[str, Any] = field(default_factory=dict)
    round_limit: int | None = None
    aggregator: Aggregator = field(default_factory=FedAverage)
    strategy: Strategy = field(default_factory=DefaultStrategy)
    agg_optimizer: Optimizer | None = None
    researcher_optimizer: ResearcherOptimizer | None = None
    secagg: SecureAggregation | None = None
    keep_checkpoints: int = DEFAULT_KEEP_CHECKPOINTS
    # Progress.
    round: int = 0
    global_params: dict[str, np.ndarray] | None = None
    #: The file holding exactly `global_params` (the round's), linked into checkpoints.
    global_params_file: Path | None = None
    history: list[RoundRecord] = field(default_factory=list)

    def set_agg_optimizer(self, optimizer: Optimizer | None) -> None:
        self.agg_optimizer = optimizer
        self.researcher_optimizer = None if optimizer is None else ResearcherOptimizer(optimizer)

    # -- to disk ------------------------------------------------------------------------------
    def to_checkpoint(self) -> Checkpoint:
        """The whole state as a Checkpoint (JSON-able part, arrays, plan source)."""
        if self.global_params is None or self.plan is None:
            raise ConfigurationError("nothing to checkpoint yet: set a training plan first")
        arrays: dict[str, np.ndarray] = {}
        if self.global_params_file is None:
            arrays = {f"{PARAM_PREFIX}/{name}": v for name, v in self.global_params.items()}
        optimizer_state = None
        if self.researcher_optimizer is not None and self.agg_optimizer is not None:
            meta, optim_arrays = self.researcher_optimizer.get_state()
            arrays.update(optim_arrays)
            optimizer_state = {"spec": self.agg_optimizer.to_spec(), "state": meta}
        state = {
            "experiment_id": self.experiment_id,
            "round_limit": self.round_limit,
            "tags": self.tags,
            "nodes": self.nodes,
            "plan": {"class_name": self.plan.class_name, "sha256": self.plan.sha256},
            "training_args": self.training_args.to_dict(),
            "model_args": self.model_args,
            "aggregator": self.aggregator.get_state(),
            "strategy": self.strategy.get_state(),
            "agg_optimizer": optimizer_state,
            "secagg": None if self.secagg is None else self.secagg.to_dict(),
            "keep_checkpoints": self.keep_checkpoints,
            "history": [record.to_dict() for record in self.history],
            "saved_at": time.time(),
        }
        return Checkpoint(
            round=self.round,
            state=state,
            arrays=arrays,
            plan_source=self.plan.source,
            params_file=self.global_params_file,
        )

    # -- from disk ----------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint) -> ExperimentState:
        """Rebuild the whole experiment, configuration included, from a checkpoint."""
        saved = checkpoint.state
        if checkpoint.path is None:
            raise ConfigurationError("a checkpoint read from disk is needed to rebuild its plan")
        plan = PlanInfo(
            saved["plan"]["class_name"], checkpoint.plan_source, saved["plan"]["sha256"]
        )
        state = cls(
            experiment_id=str(saved["experiment_id"]),
            tags=list(saved["tags"]),
            nodes=None if saved["nodes"] is None else list(saved["nodes"]),
            # Probed, not imported: the checkpoint directory may be pruned, so from a copy.
            plan_file=plan_file_for_source(plan.class_name, plan.source, plan.sha256),
            plan=plan,
            training_args=TrainingArgs.from_dict(saved["training_args"]),
            model_args=dict(saved["model_args"]),
            round_limit=saved["round_limit"],
            aggregator=aggregator_from_state(saved["aggregator"]),
            strategy=strategy_from_state(saved["strategy"]),
            secagg=SecureAggregation.from_value(saved.get("secagg") or False),
            keep_checkpoints=int(saved.get("keep_checkpoints", DEFAULT_KEEP_CHECKPOINTS)),
        )
        saved_optimizer = saved.get("agg_optimizer")
        if saved_optimizer is not None:
            state.set_agg_optimizer(Optimizer.from_spec(saved_optimizer["spec"]))
        state.adopt_progress(checkpoint)
        return state

    def adopt_progress(self, checkpoint: Checkpoint) -> None:
        """Take a checkpoint's progress, keeping this state's configuration (resume()).

        Brings the experiment id, round, global parameters, server-optimizer, aggregator and
        strategy state, and the history; warns where the configuration differs from the one
        the checkpoint ran with.
        """
        saved = checkpoint.state
        self._check_same_plan(checkpoint)
        if saved["training_args"] != self.training_args.to_dict():
            log.warning(
                "training_args differ from the ones checkpoint %s was run with", checkpoint.path
            )
        self._adopt_policy_state(saved, checkpoint.path)
        self.experiment_id = str(saved["experiment_id"])
        self.round = checkpoint.round
        if self.round_limit is not None and self.round_limit < self.round:
            self.round_limit = self.round
        self.global_params = (
            checkpoint.params
            if checkpoint.params is not None
            else split_arrays(checkpoint.arrays, PARAM_PREFIX)
        )
        self.global_params_file = None
        if self.researcher_optimizer is not None:
            saved_optimizer = saved.get("agg_optimizer")
            if saved_optimizer is None:
                raise ConfigurationError(
                    f"checkpoint {checkpoint.path} was saved without an agg_optimizer but the "
                    "experiment now has one: resume with the configuration it ran with"
                )
            optim_arrays = {
                k: v for k, v in checkpoint.arrays.items() if k.startswith(OPTIM_PREFIX + "/")
            }
            self.researcher_optimizer.set_state(saved_optimizer["state"], optim_arrays)
        self.history = [RoundRecord.from_dict(r) for r in saved.get("history", [])]

    def _check_same_plan(self, checkpoint: Checkpoint) -> None:
        saved_plan = checkpoint.state["plan"]
        if self.plan is None:
            raise ConfigurationError(
                "no training plan: call set_training_plan_class(MyPlan) before resume()"
            )
        if self.plan.class_name != saved_plan["class_name"]:
            raise ConfigurationError(
                f"checkpoint {checkpoint.path} is of plan class {saved_plan['class_name']!r}, the "
                f"experiment now has {self.plan.class_name!r}: resume with the plan it ran with"
            )
        if self.plan.sha256 != saved_plan["sha256"]:
            log.warning(
                "the training plan changed since checkpoint %s (hash %s, now %s): nodes must "
                "approve the new plan and results will differ from an uninterrupted run",
                checkpoint.path,
                saved_plan["sha256"][:12],
                self.plan.sha256[:12],
            )

    def _adopt_policy_state(self, saved: Mapping[str, Any], path: Path | None) -> None:
        saved_strategy = saved["strategy"]
        if saved_strategy.get("class") == type(self.strategy).__name__:
            self.strategy.set_state(saved_strategy)
        else:
            log.warning(
                "checkpoint %s used strategy %s, the experiment now uses %s: keeping the new one",
                path,
                saved_strategy.get("class"),
                type(self.strategy).__name__,
            )
        if saved["aggregator"].get("class") == type(self.aggregator).__name__:
            self.aggregator.set_state(saved["aggregator"])
