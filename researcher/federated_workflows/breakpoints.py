"""Checkpoints of an Experiment: save after every round, resume, rebuild from a folder.

`BreakpointsMixin` is one of `Experiment`'s bases; it reads and writes the experiment's
state (attributes set by `Experiment.__init__`) and goes through its `set_*` methods to
rebuild a configuration, so a restored experiment is validated like a new one.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from common.errors import ConfigurationError
from common.training_args import TrainingArgs
from researcher.aggregators import Aggregator
from researcher.checkpoint import (
    PLAN_FILE,
    Checkpoint,
    latest_checkpoint,
    read_checkpoint,
    read_checkpoint_state,
    split_arrays,
    write_checkpoint,
)
from researcher.federated_workflows.run_options import run_options
from researcher.history import METRICS_FILE, MetricsLog, RoundRecord
from researcher.round_params import AggregatedParams
from researcher.settings import runtime_settings
from researcher.strategies import Strategy, strategy_from_state

if TYPE_CHECKING:
    from researcher.federated_workflows.experiment import Experiment

__all__ = ["BreakpointsMixin", "find_latest_experiment"]

log = logging.getLogger(__name__)

#: Prefix of the global parameters' names among a checkpoint's arrays.
PARAM_PREFIX = "param"
#: Prefix of the researcher optimizer's arrays (`ResearcherOptimizer.get_state`).
OPTIM_PREFIX = "optim"


class BreakpointsMixin:
    """`breakpoint()`, `resume()` and `Experiment.load_breakpoint()`."""

    # The experiment state this mixin reads and restores (owned by Experiment).
    _id: str
    _round: int
    _round_limit: int | None
    _tags: list[str]
    _nodes: list[str] | None
    _training_args: TrainingArgs
    _model_args: dict[str, Any]
    _aggregator: Aggregator
    _strategy: Strategy
    _agg_optimizer: Any
    _researcher_optimizer: Any
    _secagg: Any
    _folder: Path | None
    _folder_is_default: bool
    _keep_checkpoints: int
    _global_params: dict[str, np.ndarray] | None
    _plan: Any
    _plan_class: Any
    _history: list[RoundRecord]
    _replies: dict[int, dict[str, dict[str, Any]]]
    _aggregated: AggregatedParams
    _checkpointed_round: int | None
    _resume_pending: bool

    if TYPE_CHECKING:  # Experiment's methods this mixin relies on

        def _ensure_plan(self) -> Any: ...
        def _plan_payload_info(self) -> Any: ...
        def experimentation_folder(self) -> Path: ...
        def set_tags(self, tags: Any) -> Any: ...
        def set_nodes(self, nodes: Any) -> Any: ...
        def set_training_args(self, training_args: Any, reset: bool = True) -> Any: ...
        def set_model_args(self, model_args: Any) -> Any: ...
        def set_training_plan_class(self, training_plan_class: Any) -> Any: ...
        def set_round_limit(self, round_limit: int | None) -> Any: ...
        def set_aggregator(self, aggregator: Any) -> Any: ...
        def set_strategy(self, node_selection_strategy: Any) -> Any: ...
        def set_agg_optimizer(self, agg_optimizer: Any) -> Any: ...
        def set_secagg(self, secagg: Any) -> Any: ...

    def breakpoint(self) -> Path:
        """Checkpoint the current state now (run() also does after every round); returns its directory."""
        self._ensure_plan()
        if self._checkpointed_round is None:
            self._check_folder_is_ours()
        path = write_checkpoint(
            self.experimentation_folder(), self._snapshot(), self._keep_checkpoints
        )
        self._checkpointed_round = self._round
        return path

    def _check_folder_is_ours(self) -> None:
        """Refuse to mix this experiment's checkpoints with another's in the same folder."""
        latest = latest_checkpoint(self.experimentation_folder())
        if latest is None:
            return
        other = read_checkpoint_state(latest)
        if other.get("experiment_id") != self._id:
            raise ConfigurationError(
                f"{self.experimentation_folder()} already holds experiment {other.get('experiment_id')} "
                f"(checkpointed at round {other.get('round')}): resume it (--resume, exp.resume() or "
                "Experiment.load_breakpoint) or choose another folder (--out, experimentation_folder=...)"
            )

    @classmethod
    def load_breakpoint(cls, folder: str | Path | None = None) -> Experiment:
        """Rebuild an experiment from a checkpoint, ready to `run()` the remaining rounds.

        `folder` is an experiment folder (its latest checkpoint is used) or one checkpoint
        directory; None picks the most recently checkpointed experiment under the output root.
        The plan is re-imported from the source saved in the checkpoint.
        """
        if folder is None:
            folder = find_latest_experiment(runtime_settings().out_dir)
        checkpoint = read_checkpoint(Path(folder))
        assert checkpoint.path is not None
        exp = cls(experimentation_folder=checkpoint.path.parent.parent)
        exp._restore(checkpoint, rebuild=True)
        rounds = run_options().rounds
        if rounds is not None:
            exp.set_round_limit(max(rounds, exp.round_current()))
        return exp

    def resume(self, folder: str | Path | None = None) -> int:
        """Restore this configured experiment's state from the latest checkpoint in `folder`.

        `folder` defaults to the experimentation folder. The configuration given to this
        object (plan, optimizer, strategy, round limit) is kept; the checkpoint brings the
        experiment id, round number, global parameters, optimizer, aggregator and strategy
        state and the history. Returns the round the experiment resumes after.
        """
        source = Path(folder) if folder is not None else self.experimentation_folder()
        checkpoint = read_checkpoint(source)
        assert checkpoint.path is not None
        self._folder = checkpoint.path.parent.parent
        self._restore(checkpoint, rebuild=False)
        return self._round

    def _snapshot(self) -> Checkpoint:
        assert self._global_params is not None and self._plan_class is not None
        info = self._plan_payload_info()
        arrays: dict[str, np.ndarray] = {
            f"{PARAM_PREFIX}/{name}": value for name, value in self._global_params.items()
        }
        optimizer_state = None
        if self._researcher_optimizer is not None:
            meta, optim_arrays = self._researcher_optimizer.get_state()
            arrays.update(optim_arrays)
            optimizer_state = {"spec": self._agg_optimizer.to_spec(), "state": meta}
        state = {
            "experiment_id": self._id,
            "round_limit": self._round_limit,
            "tags": self._tags,
            "nodes": self._nodes,
            "plan": {"class_name": info.class_name, "sha256": info.sha256},
            "training_args": self._training_args.to_dict(),
            "model_args": self._model_args,
            "aggregator": self._aggregator.get_state(),
            "strategy": self._strategy.get_state(),
            "agg_optimizer": optimizer_state,
            "secagg": None if self._secagg is None else self._secagg.to_dict(),
            "keep_checkpoints": self._keep_checkpoints,
            "history": [record.to_dict() for record in self._history],
            "saved_at": time.time(),
        }
        return Checkpoint(round=self._round, state=state, arrays=arrays, plan_source=info.source)

    def _restore(self, checkpoint: Checkpoint, *, rebuild: bool) -> None:
        state = checkpoint.state
        if rebuild:
            self._rebuild_configuration(checkpoint)
        else:
            self._check_same_experiment(checkpoint)
        self._id = str(state["experiment_id"])
        self._round = checkpoint.round
        if self._round_limit is not None and self._round_limit < self._round:
            self._round_limit = self._round
        params = split_arrays(checkpoint.arrays, PARAM_PREFIX)
        self._global_params = params
        self._plan = None
        self._ensure_plan()
        if self._researcher_optimizer is not None:
            saved = state.get("agg_optimizer")
            if saved is None:
                raise ConfigurationError(
                    f"checkpoint {checkpoint.path} was saved without an agg_optimizer but the "
                    "experiment now has one: resume with the configuration it ran with"
                )
            optim_arrays = {
                k: v for k, v in checkpoint.arrays.items() if k.startswith(OPTIM_PREFIX + "/")
            }
            self._researcher_optimizer.set_state(saved["state"], optim_arrays)
        self._history = [RoundRecord.from_dict(r) for r in state.get("history", [])]
        self._replies = {record.round: _replies_from_record(record) for record in self._history}
        self._aggregated.restore(self._round, params)
        self._checkpointed_round = self._round
        self._resume_pending = False
        MetricsLog(self.experimentation_folder() / METRICS_FILE).truncate_after(self._round)
        log.info(
            "experiment %s restored from %s: %d round(s) done",
            self._id,
            checkpoint.path,
            self._round,
        )

    def _rebuild_configuration(self, checkpoint: Checkpoint) -> None:
        import researcher.aggregators as aggregators
        from common.optimizers.optimizer import Optimizer
        from researcher.federated_workflows.plan_loader import load_plan_class

        state = checkpoint.state
        assert checkpoint.path is not None
        plan_class = load_plan_class(checkpoint.path / PLAN_FILE, state["plan"]["class_name"])
        self.set_tags(state["tags"])
        self.set_nodes(state["nodes"])
        self.set_training_args(state["training_args"])
        self.set_model_args(state["model_args"])
        self.set_training_plan_class(plan_class)
        self.set_round_limit(state["round_limit"])
        aggregator_name = str(state["aggregator"].get("class"))
        aggregator_cls = (
            getattr(aggregators, aggregator_name, None)
            if aggregator_name in aggregators.__all__
            else None
        )
        if not (isinstance(aggregator_cls, type) and issubclass(aggregator_cls, Aggregator)):
            raise ConfigurationError(
                f"checkpoint {checkpoint.path} uses unknown aggregator {aggregator_name!r}"
            )
        aggregator = aggregator_cls()
        aggregator.set_state(state["aggregator"])
        self.set_aggregator(aggregator)
        self.set_strategy(strategy_from_state(state["strategy"]))
        saved_optimizer = state.get("agg_optimizer")
        self.set_agg_optimizer(
            None if saved_optimizer is None else Optimizer.from_spec(saved_optimizer["spec"])
        )
        self.set_secagg(state.get("secagg") or False)
        self._keep_checkpoints = int(state.get("keep_checkpoints", self._keep_checkpoints))

    def _check_same_experiment(self, checkpoint: Checkpoint) -> None:
        state = checkpoint.state
        if self._plan_class is None:
            raise ConfigurationError(
                "no training plan: call set_training_plan_class(MyPlan) before resume()"
            )
        saved_plan = state["plan"]
        info = self._plan_payload_info()
        if info.class_name != saved_plan["class_name"]:
            raise ConfigurationError(
                f"checkpoint {checkpoint.path} is of plan class {saved_plan['class_name']!r}, the "
                f"experiment now has {info.class_name!r}: resume with the plan it ran with"
            )
        if info.sha256 != saved_plan["sha256"]:
            log.warning(
                "the training plan changed since checkpoint %s (hash %s, now %s): nodes must approve "
                "the new plan and results will differ from an uninterrupted run",
                checkpoint.path,
                saved_plan["sha256"][:12],
                info.sha256[:12],
            )
        if state["training_args"] != self._training_args.to_dict():
            log.warning(
                "training_args differ from the ones checkpoint %s was run with", checkpoint.path
            )
        saved_strategy = state["strategy"]
        if saved_strategy.get("class") == type(self._strategy).__name__:
            self._strategy.set_state(saved_strategy)
        else:
            log.warning(
                "checkpoint %s used strategy %s, the experiment now uses %s: keeping the new one",
                checkpoint.path,
                saved_strategy.get("class"),
                type(self._strategy).__name__,
            )
        if state["aggregator"].get("class") == type(self._aggregator).__name__:
            self._aggregator.set_state(state["aggregator"])

    def _resume_if_asked(self) -> None:
        """`fedloom researcher run X.py --resume`: restore before the first round."""
        if not self._resume_pending:
            return
        self._resume_pending = False
        folder = self.experimentation_folder()
        if self._folder_is_default:
            folder = find_latest_experiment(runtime_settings().out_dir)
        self.resume(folder)


def _replies_from_record(record: RoundRecord) -> dict[str, dict[str, Any]]:
    return {
        node.node: {
            "node_name": node.node_name,
            "sample_size": node.n_samples,
            "metrics": dict(node.metrics),
            "loss": node.loss,
            "timing": {"train_seconds": node.train_seconds},
            "params": None,
        }
        for node in record.nodes
    }


def find_latest_experiment(out_dir: Path) -> Path:
    """The experiment folder under `out_dir` whose latest checkpoint is the most recent."""
    candidates = []
    if Path(out_dir).is_dir():
        for folder in Path(out_dir).iterdir():
            checkpoint = latest_checkpoint(folder) if folder.is_dir() else None
            if checkpoint is not None:
                candidates.append((checkpoint.stat().st_mtime, folder))
    if not candidates:
        raise ConfigurationError(
            f"no checkpointed experiment under {out_dir}: pass the experiment folder explicitly "
            "(--out, experimentation_folder=..., or load_breakpoint(folder))"
        )
    return max(candidates)[1]
