"""Experiment: the researcher's handle on a federated training, in Fed-BioMed's style.

A thin facade: its setters validate and write into one `ExperimentState`
(researcher/rounds/state.py); `run()` hands each round to the round engine
(researcher/rounds/round.py) and commits the result; checkpoints save and restore the
state as a whole.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from common.errors import ConfigurationError, FedloomError, SecaggError
from common.optimizers.optimizer import Optimizer
from common.secagg import SecureAggregation
from common.tags import tag_problem
from common.trace import span
from common.training_args import TrainingArgs
from common.training_plans.base import BaseTrainingPlan
from common.training_plans.source import plan_hash, plan_source
from researcher.aggregators import Aggregator, FedAverage
from researcher.backend import Backend
from researcher.checkpoint import (
    DEFAULT_KEEP_CHECKPOINTS,
    latest_checkpoint,
    read_checkpoint,
    read_checkpoint_state,
    write_checkpoint,
)
from researcher.experiment_state import ExperimentState
from researcher.federated_workflows.interrupts import deferred_interrupts
from researcher.history import METRICS_FILE, MetricsLog, RoundRecord, TensorBoardLog
from researcher.optimization import check_optimizer_pairing
from researcher.plan_loader import load_plan_class
from researcher.plan_probe import PlanDetails, PlanFile, probe_plan
from researcher.privacy import node_dp_setup
from researcher.progress import ProgressReporter, make_progress
from researcher.round_params import AggregatedParams, NodeParamsStore, write_npz
from researcher.rounds import GrpcExchange, PlanInfo, RoundSetup, run_round
from researcher.rounds.aggregation import check_secagg_configuration
from researcher.rounds.exchange import Exchange
from researcher.rounds.reply import TrainReply
from researcher.rounds.round import RoundResult
from researcher.run_control import RunControl
from researcher.run_options import RunOptions, default_run_options
from researcher.server import get_server
from researcher.strategies import DefaultStrategy, Strategy

__all__ = ["Experiment", "find_latest_experiment"]

log = logging.getLogger(__name__)

FINAL_PARAMS_FILE = "final_params.npz"
#: Default seconds to wait for enough matching nodes before a round.
DEFAULT_NODE_WAIT_TIMEOUT = 60.0

#: What `training_replies()` gives per round and node.
ReplySummary = dict[str, Any]


class Experiment:
    """A federated training: which nodes (by tags), which plan, how many rounds, how to aggregate.

    Every constructor argument has a matching `set_*` method. `run()` trains until the
    round limit, checkpointing after every round into the experimentation folder;
    `Experiment.load_breakpoint(folder)` rebuilds an experiment from its latest checkpoint.
    `run_options` (address, output folder, TLS, --rounds, --resume) default to the
    process's (`researcher.run_options.use_run_options`, set by `fedloom researcher run`).
    `backend` runs the rounds elsewhere than on real nodes over gRPC, e.g.
    `fedloom.simulation.Simulation(nodes=100, ...)` (researcher/backend.py).
    """

    def __init__(
        self,
        *,
        tags: Sequence[str] | str | None = None,
        nodes: Sequence[str] | None = None,
        training_data: None = None,
        training_plan_class: type[BaseTrainingPlan] | None = None,
        training_plan: PlanFile | None = None,
        training_args: Mapping[str, Any] | TrainingArgs | None = None,
        model_args: Mapping[str, Any] | None = None,
        round_limit: int | None = None,
        aggregator: Aggregator | None = None,
        agg_optimizer: Optimizer | None = None,
        node_selection_strategy: Strategy | None = None,
        secagg: bool | Mapping[str, Any] | SecureAggregation | None = False,
        experimentation_folder: str | Path | None = None,
        node_wait_timeout: float = DEFAULT_NODE_WAIT_TIMEOUT,
        retain_node_params: bool = False,
        keep_checkpoints: int = DEFAULT_KEEP_CHECKPOINTS,
        show_progress: bool | None = None,
        run_options: RunOptions | None = None,
        exchange: Exchange | None = None,
        backend: Backend | None = None,
    ) -> None:
        if exchange is not None and backend is not None:
            raise ConfigurationError("give either exchange or backend, not both")
        self._options = run_options or default_run_options()
        self._exchange = exchange
        self._backend = backend
        experiment_id = f"exp-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        self._state = ExperimentState(experiment_id=experiment_id)
        self._plan: BaseTrainingPlan | None = None
        self._loaded_class: type[BaseTrainingPlan] | None = None
        self._folder = Path()
        self._folder_is_default = True
        self._node_wait_timeout = float(node_wait_timeout)
        self._show_progress = show_progress
        self._aggregated = AggregatedParams(
            lambda: self.experimentation_folder() / "aggregated_params"
        )
        self._node_params = (
            NodeParamsStore(lambda: self.experimentation_folder() / "node_params")
            if retain_node_params
            else None
        )
        self._replies: dict[int, dict[str, ReplySummary]] = {}
        self._checkpointed_round: int | None = None
        self._resume_pending = self._options.resume

        self.set_tags(tags)
        self.set_nodes(nodes)
        self.set_training_data(training_data, from_tags=True)
        self.set_training_args(training_args)
        self.set_model_args(model_args)
        if training_plan_class is not None and training_plan is not None:
            raise ConfigurationError(
                "give either training_plan_class (a class) or training_plan (a PlanFile), not both"
            )
        if training_plan_class is not None:
            self.set_training_plan_class(training_plan_class)
        if training_plan is not None:
            self.set_training_plan(training_plan)
        self.set_round_limit(round_limit)
        self.set_aggregator(aggregator)
        self.set_strategy(node_selection_strategy)
        self.set_agg_optimizer(agg_optimizer)
        self.set_secagg(secagg)
        self.set_keep_checkpoints(keep_checkpoints)
        self.set_experimentation_folder(experimentation_folder)
        if self._options.rounds is not None:
            log.info("round limit set to %d by --rounds", self._options.rounds)
            self.set_round_limit(self._options.rounds)

    # -- configuration --------------------------------------------------------------------
    def set_tags(self, tags: Sequence[str] | str | None) -> list[str]:
        """Tags a node's dataset must all carry to take part."""
        if tags is None:
            self._state.tags = []
        elif isinstance(tags, str):
            self._state.tags = [tags]
        else:
            if not all(isinstance(t, str) for t in tags):
                raise ConfigurationError(f"tags must be strings, got {list(tags)!r}")
            self._state.tags = list(tags)
        for tag in self._state.tags:
            problem = tag_problem(tag)
            if problem is not None:
                raise ConfigurationError(problem)
        return list(self._state.tags)

    def set_nodes(self, nodes: Sequence[str] | None) -> list[str] | None:
        """Restrict the experiment to these node ids (None: any node holding the tags)."""
        if nodes is not None and (
            isinstance(nodes, str) or not all(isinstance(n, str) for n in nodes)
        ):
            raise ConfigurationError(f"nodes must be a list of node ids, got {nodes!r}")
        self._state.nodes = None if nodes is None else list(nodes)
        return self.nodes()

    def set_training_data(self, training_data: None = None, from_tags: bool = True) -> None:
        """Accepted for Fed-BioMed compatibility: datasets are always found from the tags."""
        if training_data is not None or not from_tags:
            raise ConfigurationError(
                "fedloom finds datasets from tags: call set_training_data(None, from_tags=True) "
                "or simply set_tags([...])"
            )

    def set_training_plan_class(
        self, training_plan_class: type[BaseTrainingPlan]
    ) -> type[BaseTrainingPlan]:
        """The plan class; its source is sent to the nodes."""
        if not (
            isinstance(training_plan_class, type)
            and issubclass(training_plan_class, BaseTrainingPlan)
        ):
            raise ConfigurationError(
                f"training_plan_class must be a subclass of TorchTrainingPlan, FedSGDClassifier or "
                f"FedSGDRegressor, got {training_plan_class!r}"
            )
        source = plan_source(training_plan_class)
        self._state.plan_class = training_plan_class
        self._state.plan_file = None
        self._state.plan = PlanInfo(training_plan_class.__name__, source, plan_hash(source))
        self._forget_plan()
        return training_plan_class

    def set_training_plan(self, training_plan: PlanFile) -> PlanFile:
        """The plan as a file and class name: `PlanFile("plan.py", "MyPlan")`.

        The file is never imported in this process: a short-lived child process builds the
        plan and hands back its initial parameters, source and optimizer settings
        (researcher/plan_probe.py), so a researcher that only aggregates never loads torch.
        `training_plan()` and `training_plan_class()` still work, importing the plan (and
        torch) on first call.
        """
        if not isinstance(training_plan, PlanFile):
            raise ConfigurationError(
                f"training_plan must be a PlanFile(path, class_name), got {training_plan!r}; "
                "give a class with training_plan_class=..."
            )
        if not training_plan.path.is_file():
            raise ConfigurationError(f"training plan file {training_plan.path} does not exist")
        self._state.plan_class = None
        self._state.plan_file = training_plan
        self._state.plan = None
        self._forget_plan()
        return training_plan

    def set_training_args(
        self, training_args: Mapping[str, Any] | TrainingArgs | None, reset: bool = True
    ) -> dict[str, Any]:
        """Local training settings (epochs or num_updates, batch_size, test_ratio, round_timeout...).

        With `reset=False` the given keys update the current arguments instead of replacing them.
        """
        if not reset and training_args is not None:
            updates = (
                training_args.to_dict()
                if isinstance(training_args, TrainingArgs)
                else dict(training_args)
            )
            training_args = {**self._state.training_args.to_dict(), **updates}
        self._state.training_args = TrainingArgs.from_dict(training_args)
        self._forget_plan()
        return self._state.training_args.to_dict()

    def set_test_ratio(self, ratio: float) -> float:
        """Fraction of each node's data held out for validation."""
        self.set_training_args({"test_ratio": ratio}, reset=False)
        return self._state.training_args.test_ratio

    def set_test_on_local_updates(self, flag: bool = True) -> bool:
        """Validate each node's model after local training (metrics `local_*`)."""
        self.set_training_args({"test_on_local_updates": bool(flag)}, reset=False)
        return self._state.training_args.test_on_local_updates

    def set_test_on_global_updates(self, flag: bool = True) -> bool:
        """Validate the received global model before local training (metrics `global_*`)."""
        self.set_training_args({"test_on_global_updates": bool(flag)}, reset=False)
        return self._state.training_args.test_on_global_updates

    def set_model_args(self, model_args: Mapping[str, Any] | None) -> dict[str, Any]:
        """Arguments passed to the plan's `init_model(model_args)` (JSON-serialisable)."""
        values = dict(model_args or {})
        try:
            json.dumps(values)
        except TypeError as exc:
            raise ConfigurationError(
                f"model_args must be JSON-serialisable (numbers, strings, lists): {exc}"
            ) from exc
        self._state.model_args = values
        self._forget_plan()
        return dict(values)

    def set_round_limit(self, round_limit: int | None) -> int | None:
        """Total number of rounds `run()` goes up to (None: give `rounds` to `run()`)."""
        if round_limit is not None and (
            not isinstance(round_limit, int) or isinstance(round_limit, bool) or round_limit < 0
        ):
            raise ConfigurationError(
                f"round_limit must be a non-negative integer or None, got {round_limit!r}"
            )
        if round_limit is not None and round_limit < self._state.round:
            raise ConfigurationError(
                f"round_limit {round_limit} is below the {self._state.round} round(s) already run"
            )
        self._state.round_limit = round_limit
        return round_limit

    def set_aggregator(self, aggregator: Aggregator | None) -> Aggregator:
        """How replies become the new global model (default FedAverage)."""
        if aggregator is None:
            aggregator = FedAverage()
        if not isinstance(aggregator, Aggregator):
            raise ConfigurationError(f"aggregator must be e.g. FedAverage(), got {aggregator!r}")
        if self._state.secagg is not None:
            check_secagg_configuration(self._state.secagg, aggregator)
        self._state.aggregator = aggregator
        return aggregator

    def set_agg_optimizer(self, agg_optimizer: Optimizer | None) -> Optimizer | None:
        """A researcher-side `Optimizer` stepping on the pseudo-gradient (FedOpt), or None."""
        if agg_optimizer is not None and not isinstance(agg_optimizer, Optimizer):
            raise ConfigurationError(
                f"agg_optimizer must be a common.optimizers.optimizer.Optimizer (declearn-based), got "
                f"{type(agg_optimizer).__name__}: framework-native optimizers cannot run on the researcher"
            )
        self._state.set_agg_optimizer(agg_optimizer)
        return agg_optimizer

    def set_strategy(self, node_selection_strategy: Strategy | None) -> Strategy:
        """Which nodes train each round and how many answers a round needs (default DefaultStrategy)."""
        if node_selection_strategy is None:
            node_selection_strategy = DefaultStrategy()
        if not isinstance(node_selection_strategy, Strategy):
            raise ConfigurationError(
                f"node_selection_strategy must be e.g. DefaultStrategy(), got {node_selection_strategy!r}"
            )
        self._state.strategy = node_selection_strategy
        return node_selection_strategy

    def set_secagg(
        self, secagg: bool | Mapping[str, Any] | SecureAggregation | None
    ) -> SecureAggregation | None:
        """True, False, a dict of settings or a `common.secagg.SecureAggregation`."""
        try:
            settings = SecureAggregation.from_value(secagg)
        except SecaggError as exc:
            raise ConfigurationError(f"secagg: {exc}") from exc
        if settings is not None:
            check_secagg_configuration(settings, self._state.aggregator)
        self._state.secagg = settings
        return settings

    def set_keep_checkpoints(self, keep: int) -> int:
        """How many round checkpoints to keep (the latest is enough to resume)."""
        if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
            raise ConfigurationError(f"keep_checkpoints must be at least 1, got {keep!r}")
        self._state.keep_checkpoints = keep
        return keep

    def set_experimentation_folder(self, folder: str | Path | None) -> Path:
        """Where metrics, checkpoints and the final model go (default: <out>/<experiment id>)."""
        self._folder_is_default = folder is None
        self._folder = (
            Path(folder)
            if folder is not None
            else self._options.out_dir / self._state.experiment_id
        )
        return self._folder

    # -- accessors ------------------------------------------------------------------------
    @property
    def id(self) -> str:
        return self._state.experiment_id

    def experimentation_folder(self) -> Path:
        return self._folder

    def tags(self) -> list[str]:
        return list(self._state.tags)

    def nodes(self) -> list[str] | None:
        return None if self._state.nodes is None else list(self._state.nodes)

    def round_current(self) -> int:
        return self._state.round

    def round_limit(self) -> int | None:
        return self._state.round_limit

    def training_plan_class(self) -> type[BaseTrainingPlan] | None:
        """The plan class; for a plan given as a file, imported here on first call (torch too)."""
        if self._state.plan_class is not None:
            return self._state.plan_class
        if self._loaded_class is None and self._state.plan_file is not None:
            plan_file = self._state.plan_file
            self._loaded_class = load_plan_class(plan_file.path, plan_file.class_name)
        return self._loaded_class

    def training_plan_file(self) -> PlanFile | None:
        """The plan's file when it was given as one (or restored from a checkpoint)."""
        return self._state.plan_file

    def training_args(self) -> dict[str, Any]:
        return self._state.training_args.to_dict()

    def model_args(self) -> dict[str, Any]:
        return dict(self._state.model_args)

    def aggregator(self) -> Aggregator:
        return self._state.aggregator

    def agg_optimizer(self) -> Optimizer | None:
        return self._state.agg_optimizer

    def strategy(self) -> Strategy:
        return self._state.strategy

    def secagg(self) -> SecureAggregation | None:
        return self._state.secagg

    def run_options(self) -> RunOptions:
        return self._options

    def aggregated_params(self) -> AggregatedParams:
        """round -> {"params": global parameters after that round, "params_path": its file}.

        Kept on disk in the experiment folder (only the latest round in memory).
        """
        return self._aggregated

    def training_replies(self) -> dict[int, dict[str, ReplySummary]]:
        """round -> node_id -> {"params", "sample_size", "metrics", "timing", "node_name", "loss"}.

        "params" is None unless the experiment was created with `retain_node_params=True`
        (then read from disk when accessed), and always None for parameters SecAgg hid.
        """
        return self._replies

    def metrics_history(self) -> list[RoundRecord]:
        """One RoundRecord per completed round: each node's loss and metrics, and the failures."""
        return list(self._state.history)

    def training_plan(self) -> BaseTrainingPlan:
        """The plan instance, its model holding the latest global parameters.

        For a plan given as a file (`PlanFile`, TOML experiments, `load_breakpoint`) the
        instance is built on first call, which imports the plan's framework (torch) into
        this process; running rounds never needs it.
        """
        return self._ensure_plan()

    def check_training_plan(self) -> None:
        """Build the plan now (probing a plan file) so a broken plan fails here, not in `run()`."""
        self._describe()

    # -- running ----------------------------------------------------------------------------
    def run(self, rounds: int | None = None, increase: bool = False) -> int:
        """Run `rounds` rounds (default: up to the round limit); returns how many ran.

        With `increase=True` the round limit grows to allow the requested rounds. The state
        is checkpointed after every round; on Ctrl-C the current round is abandoned, the
        checkpoint of the last completed round stays, and KeyboardInterrupt propagates.
        """
        self._resume_if_asked()
        rounds = self._rounds_to_run(rounds, increase)
        if rounds <= 0:
            return 0
        setup = self._round_setup()
        exchange = self._exchange_for(setup)
        if self._checkpointed_round is None:
            self._check_folder_is_ours()
        first, last = self._state.round + 1, self._state.round + rounds
        progress = make_progress(self._show_progress)
        tensorboard = TensorBoardLog.open(self.experimentation_folder(), first)
        control = RunControl(self.experimentation_folder())
        control.started(self.id, first, last)
        outcome, error = "failed", ""
        try:
            progress.start(self.id, first, last)
            while self._state.round < last:
                self._run_one(
                    exchange, setup, progress, tensorboard, settle=self._state.round + 1 == first
                )
                control.round_done(self._state.round, self._state.history[-1].mean_loss)
                if self._state.round < last and control.stop_requested():
                    log.info(
                        "stop requested: the run ends after round %d's checkpoint",
                        self._state.round,
                    )
                    break
            outcome = "done" if self._state.round == last else "stopped"
        except KeyboardInterrupt:
            outcome = "interrupted"
            log.warning(
                "interrupted: round %d is the last completed and checkpointed round (in %s); a "
                "round under way is dropped. Resume with `fedloom researcher run ... --resume` "
                "or Experiment.load_breakpoint(%r)",
                self._state.round,
                self.experimentation_folder(),
                str(self.experimentation_folder()),
            )
            raise
        except BaseException as exc:
            error = str(exc)
            raise
        finally:
            # Its buffers kept between rounds (2x the model at FedAverage) go with the run.
            self._state.aggregator.release()
            progress.stop(outcome)
            if tensorboard is not None:
                tensorboard.close()
            if outcome in ("done", "stopped"):
                self._save_final()
            control.finished(outcome, error)
        return rounds

    def _exchange_for(self, setup: RoundSetup) -> Exchange:
        """The given exchange, the backend's (e.g. a simulation), or real nodes over gRPC."""
        if self._exchange is not None:
            return self._exchange
        if self._backend is not None:
            return self._backend.open_exchange(setup, self.experimentation_folder())
        return GrpcExchange(get_server(self._options))

    def run_once(self, increase: bool = False) -> int:
        """Run a single round."""
        return self.run(rounds=1, increase=increase)

    def _rounds_to_run(self, rounds: int | None, increase: bool) -> int:
        state = self._state
        if rounds is None:
            if state.round_limit is None:
                raise ConfigurationError(
                    "set a round limit (set_round_limit(n)) or call run(rounds=n)"
                )
            remaining = state.round_limit - state.round
            if remaining <= 0:
                log.warning(
                    "the round limit %d is reached; raise it (set_round_limit) or call run(rounds=n, increase=True)",
                    state.round_limit,
                )
            return remaining
        if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
            raise ConfigurationError(f"rounds must be a positive integer, got {rounds!r}")
        if state.round_limit is not None and state.round + rounds > state.round_limit:
            if not increase:
                allowed = state.round_limit - state.round
                log.warning(
                    "only %d round(s) left before the round limit %d; pass increase=True to go further",
                    allowed,
                    state.round_limit,
                )
                return allowed
            state.round_limit = state.round + rounds
        return rounds

    def _run_one(
        self,
        exchange: Exchange,
        setup: RoundSetup,
        progress: ProgressReporter,
        tensorboard: TensorBoardLog | None,
        *,
        settle: bool,
    ) -> None:
        round_number = self._state.round + 1
        assert self._state.global_params is not None
        keep = None if self._node_params is None else self._node_params.writer(round_number)
        round_file = self._aggregated.latest()
        encoded = (
            round_file.payload
            if round_file is not None and round_file.path == self._state.global_params_file
            else None
        )
        with span("researcher.round", round=round_number):
            try:
                result = run_round(
                    exchange,
                    setup,
                    round_number,
                    self._state.global_params,
                    progress,
                    settle=settle,
                    keep_params=keep,
                    encoded_params=encoded,
                )
            except FedloomError as exc:
                progress.round_failed(round_number, str(exc))
                raise
            with deferred_interrupts(), span("researcher.commit"):
                self._commit(round_number, result)
        progress.round_finished(result.record)
        if tensorboard is not None:
            tensorboard.append(result.record)

    def _commit(self, round_number: int, result: RoundResult) -> None:
        """Adopt the round's result, append its metrics and checkpoint it (signals held)."""
        state = self._state
        # Written once; from here on the global model is the mapped file (no heap copy),
        # which the checkpoint links and the next round publishes as is.
        with span("researcher.round_file"):
            round_file = self._aggregated.record(round_number, result.params)
        state.global_params = round_file.params
        state.global_params_file = round_file.path
        state.round = round_number
        state.history.append(result.record)
        if self._plan is not None:
            self._plan.set_shared_parameters(round_file.params)
        self._replies[round_number] = {
            node_id: self._reply_summary(round_number, node_id, reply)
            for node_id, reply in result.replies.items()
        }
        MetricsLog(self.experimentation_folder() / METRICS_FILE).append(result.record)
        self.breakpoint()

    def _reply_summary(self, round_number: int, node_id: str, reply: TrainReply) -> ReplySummary:
        params = None if self._node_params is None else self._node_params.get(round_number, node_id)
        return {
            "node_name": reply.node_name,
            "sample_size": reply.n_samples,
            "metrics": dict(reply.metrics),
            "loss": reply.mean_loss,
            "losses": list(reply.losses),
            "timing": {"train_seconds": reply.train_seconds},
            "params": params,
        }

    # -- checkpoints ------------------------------------------------------------------------
    def breakpoint(self) -> Path:
        """Checkpoint the current state now (run() also does after every round); returns its directory."""
        self._describe()
        if self._checkpointed_round is None:
            self._check_folder_is_ours()
        path = write_checkpoint(
            self.experimentation_folder(), self._state.to_checkpoint(), self._state.keep_checkpoints
        )
        self._checkpointed_round = self._state.round
        return path

    @classmethod
    def load_breakpoint(
        cls, folder: str | Path | None = None, *, run_options: RunOptions | None = None
    ) -> Experiment:
        """Rebuild an experiment from a checkpoint, ready to `run()` the remaining rounds.

        `folder` is an experiment folder (its latest checkpoint is used) or one checkpoint
        directory; None picks the most recently checkpointed experiment under the output root.
        The plan is re-imported from the source saved in the checkpoint.
        """
        options = run_options or default_run_options()
        if folder is None:
            folder = find_latest_experiment(options.out_dir)
        checkpoint = read_checkpoint(Path(folder))
        assert checkpoint.path is not None
        exp = cls(
            experimentation_folder=checkpoint.path.parent.parent,
            run_options=options.with_changes(resume=False),
        )
        exp._state = ExperimentState.from_checkpoint(checkpoint)
        exp._after_restore()
        if options.rounds is not None:
            exp.set_round_limit(max(options.rounds, exp.round_current()))
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
        if self._state.plan is None and self._state.plan_file is not None:
            self._describe()  # a plan file's name and hash come from its probe
        self._folder = checkpoint.path.parent.parent
        self._state.adopt_progress(checkpoint)
        self._after_restore()
        return self._state.round

    def _after_restore(self) -> None:
        state = self._state
        self._plan = None
        self._describe()
        self._replies = {record.round: _replies_from_record(record) for record in state.history}
        self._aggregated.restore(state.round, state.global_params)
        round_file = self._aggregated.latest()
        if round_file is not None:
            state.global_params = round_file.params
            state.global_params_file = round_file.path
        self._checkpointed_round = state.round
        self._resume_pending = False
        MetricsLog(self.experimentation_folder() / METRICS_FILE).truncate_after(state.round)
        log.info(
            "experiment %s restored from %s: %d round(s) done",
            state.experiment_id,
            self.experimentation_folder(),
            state.round,
        )

    def _resume_if_asked(self) -> None:
        """`fedloom researcher run X.py --resume`: restore before the first round."""
        if not self._resume_pending:
            return
        self._resume_pending = False
        folder = self.experimentation_folder()
        if self._folder_is_default:
            folder = find_latest_experiment(self._options.out_dir)
        self.resume(folder)

    def _check_folder_is_ours(self) -> None:
        """Refuse to mix this experiment's checkpoints with another's in the same folder."""
        latest = latest_checkpoint(self.experimentation_folder())
        if latest is None:
            return
        other = read_checkpoint_state(latest)
        if other.get("experiment_id") != self.id:
            raise ConfigurationError(
                f"{self.experimentation_folder()} already holds experiment {other.get('experiment_id')} "
                f"(checkpointed at round {other.get('round')}): resume it (--resume, exp.resume() or "
                "Experiment.load_breakpoint) or choose another folder (--out, experimentation_folder=...)"
            )

    # -- internals ----------------------------------------------------------------------------
    def _forget_plan(self) -> None:
        """The plan's settings changed: its instance and details are rebuilt when next needed."""
        self._plan = None
        self._loaded_class = None
        self._state.plan_details = None

    def _describe(self) -> PlanDetails:
        """The plan's details and initial parameters, without importing a plan file here.

        A plan class is instantiated in this process (the script imported it anyway); a
        plan file is probed in a child process (researcher/plan_probe.py).
        """
        state = self._state
        if state.plan_details is not None and state.global_params is not None:
            return state.plan_details
        if state.plan_class is not None:
            plan = self._ensure_plan()
            local = plan.parameter_tags().local
            details = PlanDetails(
                tuple(n for n in plan.trainable_parameter_names() if n not in local),
                plan.optimizer_spec(),
                plan.uses_native_optimizer(),
                tuple(sorted(local)),
            )
        elif state.plan_file is not None:
            probed = probe_plan(state.plan_file, state.model_args, state.training_args.to_dict())
            if state.plan is None:
                state.plan = PlanInfo(probed.class_name, probed.source, probed.sha256)
            if state.global_params is None:
                state.global_params = probed.params
            details = probed.details
        else:
            raise ConfigurationError(
                "no training plan: call set_training_plan_class(MyPlan) or "
                "set_training_plan(PlanFile('plan.py', 'MyPlan')) first"
            )
        state.plan_details = details
        return details

    def _ensure_plan(self) -> BaseTrainingPlan:
        if self._plan is None:
            plan_class = self.training_plan_class()
            if plan_class is None:
                raise ConfigurationError(
                    "no training plan: call set_training_plan_class(MyPlan) or "
                    "set_training_plan(PlanFile('plan.py', 'MyPlan')) first"
                )
            plan = plan_class()
            plan.post_init(self._state.model_args, self._state.training_args)
            self._plan = plan
            if self._state.global_params is None:
                self._state.global_params = plan.shared_parameters()
            else:
                plan.set_shared_parameters(self._state.global_params)
        return self._plan

    def _round_setup(self) -> RoundSetup:
        """Check the configuration once per run and freeze what every round needs."""
        details = self._describe()
        state = self._state
        # Also without an agg_optimizer: aux-var modules in the plan need their counterpart.
        check_optimizer_pairing(
            state.agg_optimizer, details.optimizer_spec, details.native_optimizer
        )
        if state.secagg is not None:  # also after load_breakpoint, before any round
            check_secagg_configuration(state.secagg, state.aggregator)
        state.aggregator.use_scratch_folder(self.experimentation_folder())
        _check_local_without_aux_vars(details)
        assert state.plan is not None
        training_args, accountant = node_dp_setup(
            state.training_args,
            state.secagg,
            supports_secure_sum=state.aggregator.supports_secure_sum,
            aux_modules=state.researcher_optimizer.optimizer.aux_var_names
            if state.researcher_optimizer is not None
            else (),
            round_limit=state.round_limit,
            history=state.history,
        )
        return RoundSetup(
            experiment_id=state.experiment_id,
            plan=state.plan,
            tags=tuple(state.tags),
            nodes=None if state.nodes is None else tuple(state.nodes),
            training_args=training_args,
            model_args=dict(state.model_args),
            node_wait_timeout=self._node_wait_timeout,
            aggregator=state.aggregator,
            strategy=state.strategy,
            optimizer=state.researcher_optimizer,
            secagg=state.secagg,
            trainable=frozenset(details.trainable),
            node_dp=accountant,
            local=frozenset(details.local),
        )

    def _save_final(self) -> None:
        folder = self.experimentation_folder()
        folder.mkdir(parents=True, exist_ok=True)
        assert self._state.global_params is not None
        path = folder / FINAL_PARAMS_FILE
        tmp = folder / "final_params.tmp.npz"
        write_npz(tmp, self._state.global_params, self._aggregated.latest())
        tmp.replace(path)
        log.info(
            "final global parameters written to %s; metrics in %s", path, folder / METRICS_FILE
        )


def _check_local_without_aux_vars(details: PlanDetails) -> None:
    """Refuse, before any round, local parameters with an aux-var module (Scaffold): its
    aux vars cover every trainable parameter, so they would carry the local ones away."""
    if not details.local or details.optimizer_spec is None:
        return
    modules = sorted(set(Optimizer.from_spec(details.optimizer_spec).aux_var_modules().values()))
    if modules:
        raise ConfigurationError(
            f"the training plan keeps parameters {list(details.local)[:5]} local, but its "
            f"optimizer's modules {modules} send aux vars over every parameter, local ones "
            "included: drop those modules or the plan's local_parameters"
        )


def _replies_from_record(record: RoundRecord) -> dict[str, ReplySummary]:
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
