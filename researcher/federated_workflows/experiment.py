"""Experiment: the researcher's handle on a federated training, in Fed-BioMed's style."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import ConfigurationError, NoMatchingNodesError, RoundFailedError
from common.payload import encode_arrays
from common.proto import fedloom_pb2 as pb
from common.training_args import TrainingArgs
from common.training_plans.base import BaseTrainingPlan
from common.training_plans.source import plan_hash, plan_source
from researcher.aggregators import Aggregator, FedAverage
from researcher.checkpoint import DEFAULT_KEEP_CHECKPOINTS
from researcher.federated_workflows.breakpoints import BreakpointsMixin, find_latest_experiment
from researcher.federated_workflows.interrupts import deferred_interrupts
from researcher.federated_workflows.run_options import run_options
from researcher.history import (
    METRICS_FILE,
    MetricsLog,
    NodeRoundRecord,
    RoundRecord,
    TensorBoardLog,
)
from researcher.node_directory import ConnectedNode
from researcher.progress import ProgressReporter, make_progress
from researcher.round import NodeReply, PlanInfo, RoundRequest, run_round
from researcher.round_params import AggregatedParams
from researcher.server import ResearcherServer, get_server
from researcher.settings import runtime_settings
from researcher.strategies import DefaultStrategy, Strategy

__all__ = ["Experiment", "find_latest_experiment"]

log = logging.getLogger(__name__)

#: Prefixes of array names inside payloads: model parameters and aux-var arrays.
PARAM_PREFIX = "param/"
AUX_PREFIX = "aux/"

#: Seconds to wait for more matching nodes once the strategy's minimum is connected, so
#: nodes starting together all join the first round of a run.
SETTLE_SECONDS = 2.0

FINAL_PARAMS_FILE = "final_params.npz"


class Experiment(BreakpointsMixin):
    """A federated training: which nodes (by tags), which plan, how many rounds, how to aggregate.

    Every constructor argument has a matching `set_*` method. `run()` trains until the
    round limit, checkpointing after every round into the experimentation folder;
    `Experiment.load_breakpoint(folder)` rebuilds an experiment from its latest checkpoint.
    """

    def __init__(
        self,
        tags: Sequence[str] | str | None = None,
        nodes: Sequence[str] | None = None,
        training_data: Any = None,
        training_plan_class: type[BaseTrainingPlan] | None = None,
        training_args: Mapping[str, Any] | TrainingArgs | None = None,
        model_args: Mapping[str, Any] | None = None,
        round_limit: int | None = None,
        aggregator: Aggregator | None = None,
        agg_optimizer: Any = None,
        node_selection_strategy: Strategy | None = None,
        secagg: Any = False,
        experimentation_folder: str | Path | None = None,
        node_wait_timeout: float = 60.0,
        retain_node_params: bool = True,
        keep_checkpoints: int = DEFAULT_KEEP_CHECKPOINTS,
        show_progress: bool | None = None,
    ) -> None:
        self._id = f"exp-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        self._tags: list[str] = []
        self._nodes: list[str] | None = None
        self._plan_class: type[BaseTrainingPlan] | None = None
        self._plan: BaseTrainingPlan | None = None
        self._plan_info: PlanInfo | None = None
        self._training_args = TrainingArgs()
        self._model_args: dict[str, Any] = {}
        self._round_limit: int | None = None
        self._aggregator: Aggregator = FedAverage()
        self._agg_optimizer: Any = None
        self._researcher_optimizer: Any = None
        self._strategy: Strategy = DefaultStrategy()
        self._secagg: Any = None
        self._folder: Path | None = None
        self._folder_is_default = True
        self._node_wait_timeout = node_wait_timeout
        self._retain_node_params = retain_node_params
        self._keep_checkpoints = keep_checkpoints
        self._show_progress = show_progress
        self._round = 0
        self._global_params: dict[str, np.ndarray] | None = None
        self._aggregated = AggregatedParams(
            lambda: self.experimentation_folder() / "aggregated_params"
        )
        self._replies: dict[int, dict[str, dict[str, Any]]] = {}
        self._history: list[RoundRecord] = []
        self._server: ResearcherServer | None = None
        self._checkpointed_round: int | None = None
        self._resume_pending = False

        self.set_tags(tags)
        self.set_nodes(nodes)
        self.set_training_data(training_data, from_tags=True)
        self.set_training_args(training_args)
        self.set_model_args(model_args)
        if training_plan_class is not None:
            self.set_training_plan_class(training_plan_class)
        self.set_round_limit(round_limit)
        self.set_aggregator(aggregator)
        self.set_strategy(node_selection_strategy)
        self.set_agg_optimizer(agg_optimizer)
        self.set_secagg(secagg)
        self.set_experimentation_folder(experimentation_folder)
        self._apply_run_options()

    def _apply_run_options(self) -> None:
        """Honour `fedloom researcher run ... --rounds N --resume` for script experiments."""
        options = run_options()
        if options.rounds is not None:
            log.info("round limit set to %d by --rounds", options.rounds)
            self.set_round_limit(options.rounds)
        self._resume_pending = options.resume

    # -- configuration --------------------------------------------------------------------
    def set_tags(self, tags: Sequence[str] | str | None) -> list[str]:
        """Tags a node's dataset must all carry to take part."""
        if tags is None:
            self._tags = []
        elif isinstance(tags, str):
            self._tags = [tags]
        else:
            if not all(isinstance(t, str) for t in tags):
                raise ConfigurationError(f"tags must be strings, got {list(tags)!r}")
            self._tags = list(tags)
        return self._tags

    def set_nodes(self, nodes: Sequence[str] | None) -> list[str] | None:
        """Restrict the experiment to these node ids (None: any node holding the tags)."""
        if nodes is not None and (
            isinstance(nodes, str) or not all(isinstance(n, str) for n in nodes)
        ):
            raise ConfigurationError(f"nodes must be a list of node ids, got {nodes!r}")
        self._nodes = None if nodes is None else list(nodes)
        return self._nodes

    def set_training_data(self, training_data: Any = None, from_tags: bool = True) -> None:
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
        self._plan_class = training_plan_class
        self._plan = None
        self._plan_info = None
        return training_plan_class

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
            training_args = {**self._training_args.to_dict(), **updates}
        self._training_args = TrainingArgs.from_dict(training_args)
        self._plan = None
        return self._training_args.to_dict()

    def set_test_ratio(self, ratio: float) -> float:
        """Fraction of each node's data held out for validation."""
        self.set_training_args({"test_ratio": ratio}, reset=False)
        return self._training_args.test_ratio

    def set_test_on_local_updates(self, flag: bool = True) -> bool:
        """Validate each node's model after local training (metrics `local_*`)."""
        self.set_training_args({"test_on_local_updates": bool(flag)}, reset=False)
        return self._training_args.test_on_local_updates

    def set_test_on_global_updates(self, flag: bool = True) -> bool:
        """Validate the received global model before local training (metrics `global_*`)."""
        self.set_training_args({"test_on_global_updates": bool(flag)}, reset=False)
        return self._training_args.test_on_global_updates

    def set_model_args(self, model_args: Mapping[str, Any] | None) -> dict[str, Any]:
        """Arguments passed to the plan's `init_model(model_args)` (JSON-serialisable)."""
        model_args = dict(model_args or {})
        try:
            json.dumps(model_args)
        except TypeError as exc:
            raise ConfigurationError(
                f"model_args must be JSON-serialisable (numbers, strings, lists): {exc}"
            ) from exc
        self._model_args = model_args
        self._plan = None
        return model_args

    def set_round_limit(self, round_limit: int | None) -> int | None:
        """Total number of rounds `run()` goes up to (None: give `rounds` to `run()`)."""
        if round_limit is not None and (
            not isinstance(round_limit, int) or isinstance(round_limit, bool) or round_limit < 0
        ):
            raise ConfigurationError(
                f"round_limit must be a non-negative integer or None, got {round_limit!r}"
            )
        if round_limit is not None and round_limit < self._round:
            raise ConfigurationError(
                f"round_limit {round_limit} is below the {self._round} round(s) already run"
            )
        self._round_limit = round_limit
        return round_limit

    def set_aggregator(self, aggregator: Aggregator | None) -> Aggregator:
        """How replies become the new global model (default FedAverage)."""
        if aggregator is None:
            aggregator = FedAverage()
        if not isinstance(aggregator, Aggregator):
            raise ConfigurationError(f"aggregator must be e.g. FedAverage(), got {aggregator!r}")
        self._aggregator = aggregator
        return aggregator

    def set_agg_optimizer(self, agg_optimizer: Any) -> Any:
        """A researcher-side `Optimizer` stepping on the pseudo-gradient (FedOpt), or None."""
        if agg_optimizer is None:
            self._agg_optimizer = self._researcher_optimizer = None
            return None
        from common.optimizers.optimizer import Optimizer
        from researcher.optimization import ResearcherOptimizer

        if not isinstance(agg_optimizer, Optimizer):
            raise ConfigurationError(
                f"agg_optimizer must be a common.optimizers.optimizer.Optimizer (declearn-based), got "
                f"{type(agg_optimizer).__name__}: framework-native optimizers cannot run on the researcher"
            )
        self._agg_optimizer = agg_optimizer
        self._researcher_optimizer = ResearcherOptimizer(agg_optimizer)
        return agg_optimizer

    def set_strategy(self, node_selection_strategy: Strategy | None) -> Strategy:
        """Which nodes train each round and how many answers a round needs (default DefaultStrategy)."""
        if node_selection_strategy is None:
            node_selection_strategy = DefaultStrategy()
        if not isinstance(node_selection_strategy, Strategy):
            raise ConfigurationError(
                f"node_selection_strategy must be e.g. DefaultStrategy(), got {node_selection_strategy!r}"
            )
        self._strategy = node_selection_strategy
        return node_selection_strategy

    def set_secagg(self, secagg: Any) -> Any:
        """True, False, a dict of settings or a `common.secagg.SecureAggregation`."""
        from common.errors import SecaggError
        from common.secagg import SecureAggregation

        try:
            self._secagg = SecureAggregation.from_value(secagg)
        except SecaggError as exc:
            raise ConfigurationError(f"secagg: {exc}") from exc
        return self._secagg

    def set_experimentation_folder(self, folder: str | Path | None) -> Path:
        """Where metrics, checkpoints and the final model go (default: <out>/<experiment id>)."""
        self._folder_is_default = folder is None
        self._folder = Path(folder) if folder is not None else runtime_settings().out_dir / self._id
        return self._folder

    # -- accessors ------------------------------------------------------------------------
    @property
    def id(self) -> str:
        return self._id

    def experimentation_folder(self) -> Path:
        assert self._folder is not None
        return self._folder

    def tags(self) -> list[str]:
        return list(self._tags)

    def nodes(self) -> list[str] | None:
        return None if self._nodes is None else list(self._nodes)

    def round_current(self) -> int:
        return self._round

    def round_limit(self) -> int | None:
        return self._round_limit

    def training_plan_class(self) -> type[BaseTrainingPlan] | None:
        return self._plan_class

    def training_args(self) -> dict[str, Any]:
        return self._training_args.to_dict()

    def model_args(self) -> dict[str, Any]:
        return dict(self._model_args)

    def aggregator(self) -> Aggregator:
        return self._aggregator

    def agg_optimizer(self) -> Any:
        return self._agg_optimizer

    def strategy(self) -> Strategy:
        return self._strategy

    def secagg(self) -> Any:
        return self._secagg

    def aggregated_params(self) -> AggregatedParams:
        """round -> {"params": global parameters after that round, "params_path": its file}.

        Kept on disk in the experiment folder (only the latest round in memory).
        """
        return self._aggregated

    def training_replies(self) -> dict[int, dict[str, dict[str, Any]]]:
        """round -> node_id -> {"params", "sample_size", "metrics", "timing", "node_name", "loss"}.

        Rounds restored from a checkpoint carry everything but "params" (None).
        """
        return self._replies

    def metrics_history(self) -> list[RoundRecord]:
        """One RoundRecord per completed round: each node's loss and metrics, and the failures."""
        return list(self._history)

    def training_plan(self) -> BaseTrainingPlan:
        """The plan instance, its model holding the latest global parameters."""
        return self._ensure_plan()

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
        self._check_configuration()
        if self._checkpointed_round != self._round:
            self.breakpoint()
        folder = self.experimentation_folder()
        first, last = self._round + 1, self._round + rounds
        progress = make_progress(self._show_progress)
        tensorboard = TensorBoardLog.open(folder, first)
        try:
            progress.start(self._id, first, last)
            while self._round < last:
                self._run_round(progress, tensorboard, settle=self._round + 1 == first)
        except KeyboardInterrupt:
            log.warning(
                "interrupted: round %d is the last completed and checkpointed round (in %s); a "
                "round under way is dropped. Resume with `fedloom researcher run ... --resume` "
                "or Experiment.load_breakpoint(%r)",
                self._round,
                folder,
                str(folder),
            )
            raise
        finally:
            progress.stop()
            if tensorboard is not None:
                tensorboard.close()
            if self._round >= first:
                self._save_final()
        return self._round - first + 1

    def run_once(self, increase: bool = False) -> int:
        """Run a single round."""
        return self.run(rounds=1, increase=increase)

    def _rounds_to_run(self, rounds: int | None, increase: bool) -> int:
        if rounds is None:
            if self._round_limit is None:
                raise ConfigurationError(
                    "set a round limit (set_round_limit(n)) or call run(rounds=n)"
                )
            rounds = self._round_limit - self._round
            if rounds <= 0:
                log.warning(
                    "the round limit %d is reached; raise it (set_round_limit) or call run(rounds=n, increase=True)",
                    self._round_limit,
                )
            return rounds
        if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
            raise ConfigurationError(f"rounds must be a positive integer, got {rounds!r}")
        if self._round_limit is not None and self._round + rounds > self._round_limit:
            if not increase:
                allowed = self._round_limit - self._round
                log.warning(
                    "only %d round(s) left before the round limit %d; pass increase=True to go further",
                    allowed,
                    self._round_limit,
                )
                return allowed
            self._round_limit = self._round + rounds
        return rounds

    # -- internals ----------------------------------------------------------------------------
    def _ensure_plan(self) -> BaseTrainingPlan:
        if self._plan is None:
            if self._plan_class is None:
                raise ConfigurationError(
                    "no training plan: call set_training_plan_class(MyPlan) first"
                )
            plan = self._plan_class()
            plan.post_init(self._model_args, self._training_args)
            self._plan = plan
            if self._global_params is None:
                self._global_params = plan.get_parameters()
            else:
                plan.set_parameters(self._global_params)
        return self._plan

    def _plan_payload_info(self) -> PlanInfo:
        if self._plan_info is None:
            assert self._plan_class is not None
            source = plan_source(self._plan_class)
            self._plan_info = PlanInfo(self._plan_class.__name__, source, plan_hash(source))
        return self._plan_info

    def _check_configuration(self) -> None:
        from researcher.optimization import check_optimizer_pairing

        plan = self._ensure_plan()
        spec = plan.optimizer_spec()
        native = False
        if spec is None:
            import torch

            native = isinstance(getattr(plan, "optimizer", lambda: None)(), torch.optim.Optimizer)
        # Also without an agg_optimizer: aux-var modules in the plan need their counterpart.
        check_optimizer_pairing(self._agg_optimizer, spec, native)

    def _wait_for_nodes(self, server: ResearcherServer, settle: bool) -> list[ConnectedNode]:
        def eligible() -> list[ConnectedNode]:
            nodes = server.directory.matching(self._tags)
            if self._nodes is not None:
                nodes = [n for n in nodes if n.node_id in self._nodes]
            return nodes

        needed = self._strategy.min_nodes if self._nodes is None else len(self._nodes)
        if len(eligible()) < needed:
            log.info(
                "waiting up to %.0f s for %d node(s) holding tags %s to connect on %s",
                self._node_wait_timeout,
                needed,
                self._tags,
                server.address,
            )
            server.directory.wait_until(lambda: len(eligible()) >= needed, self._node_wait_timeout)
            if settle and eligible():
                time.sleep(SETTLE_SECONDS)
        nodes = eligible()
        if not nodes:
            raise NoMatchingNodesError(self._no_nodes_message(server))
        return nodes

    def _no_nodes_message(self, server: ResearcherServer) -> str:
        connected = server.directory.connected()
        described = "; ".join(
            f"{n.label}: "
            + (", ".join(f"{d.name} {list(d.tags)}" for d in n.datasets) or "no datasets")
            for n in connected
        )
        return (
            f"no connected node holds a dataset with all tags {self._tags}"
            + (f" among nodes {self._nodes}" if self._nodes else "")
            + (
                f". Connected nodes: {described}"
                if connected
                else f". No node is connected to {server.address}"
            )
            + ". Register a dataset with these tags on a node (fedloom node dataset add --tags ...) "
            "or change the experiment's tags."
        )

    def _global_payload(self, node_ids: Sequence[str]) -> tuple[Any, pb.AuxVars]:
        assert self._global_params is not None
        arrays = {PARAM_PREFIX + k: v for k, v in self._global_params.items()}
        aux_msg = pb.AuxVars()
        if self._researcher_optimizer is not None:
            from common.optimizers.aux_codec import encode_aux_vars

            aux = self._researcher_optimizer.collect_aux_var_for(list(node_ids))
            if aux:
                aux_msg, aux_arrays = encode_aux_vars(aux, prefix=AUX_PREFIX.rstrip("/"))
                arrays.update(aux_arrays)
        return encode_arrays(arrays), aux_msg

    def _run_round(
        self, progress: ProgressReporter, tensorboard: TensorBoardLog | None, settle: bool
    ) -> None:
        self._server = get_server()
        server = self._server
        nodes = self._wait_for_nodes(server, settle)
        round_number = self._round + 1
        selected_ids = self._strategy.select([n.node_id for n in nodes], round_number)
        selected = [n for n in nodes if n.node_id in selected_ids]
        secure = self._secure_round(round_number, selected)
        payload, aux_msg = self._global_payload(selected_ids)
        assert self._global_params is not None
        progress.round_started(round_number, {n.node_id: n.label for n in selected})
        request = RoundRequest(
            experiment_id=self._id,
            round_number=round_number,
            plan=self._plan_payload_info(),
            global_payload=payload,
            aux_vars=aux_msg,
            training_args_json=self._training_args.to_json(),
            model_args_json=json.dumps(self._model_args),
            datasets={n.node_id: n.matching_dataset(self._tags).name for n in selected},  # type: ignore[union-attr]
            timeout=self._training_args.round_timeout,
            secagg={n.node_id: secure.context() for n in selected} if secure else {},
        )
        record = RoundRecord(round=round_number)
        replies: dict[str, dict[str, Any]] = {}
        aux_sum: dict[str, Any] = {}
        self._aggregator.start(self._global_params)

        def on_reply(reply: NodeReply) -> None:
            if secure is not None:
                secure.add_reply(reply.node_id, reply.arrays, reply.aux_vars)
            params = {
                k[len(PARAM_PREFIX) :]: v
                for k, v in reply.arrays.items()
                if k.startswith(PARAM_PREFIX)
            }
            if secure is None or not secure.settings.protect_parameters:
                self._aggregator.add(reply.node_id, params, float(reply.n_samples))
            if secure is None and reply.aux_vars.items:
                self._fold_aux_vars(aux_sum, reply)
            loss = float(np.mean(reply.losses)) if reply.losses else None
            record.nodes.append(
                NodeRoundRecord(
                    round=round_number,
                    node=reply.node_id,
                    node_name=reply.node_name,
                    n_samples=reply.n_samples,
                    loss=loss,
                    metrics=reply.metrics,
                    train_seconds=reply.train_seconds,
                    n_steps=reply.n_steps,
                )
            )
            replies[reply.node_id] = {
                "node_name": reply.node_name,
                "sample_size": reply.n_samples,
                "metrics": reply.metrics,
                "loss": loss,
                "losses": reply.losses,
                "timing": {"train_seconds": reply.train_seconds},
                "params": params if self._retain_node_params else None,
            }
            progress.node_answered(round_number, reply.node_id, loss, reply.n_samples)

        outcome = run_round(server, request, selected, on_reply)
        record.failures = outcome.failures
        record.seconds = outcome.seconds
        labels = {n.node_id: n.label for n in selected}
        try:
            self._strategy.check_answers(
                outcome.answered, {labels.get(k, k): v for k, v in outcome.failures.items()}
            )
            if secure is not None:
                self._unmask_round(secure, outcome, round_number, aux_sum)
            aggregated = self._aggregator.finish()
            new_params = self._apply_agg_optimizer(aggregated, aux_sum)
        except RoundFailedError as exc:
            progress.round_failed(round_number, str(exc))
            raise
        with deferred_interrupts():
            self._commit_round(round_number, new_params, replies, record)
        progress.round_finished(record)
        if tensorboard is not None:
            tensorboard.append(record)

    def _secure_round(self, round_number: int, selected: list[ConnectedNode]) -> Any:
        """SecAgg state for this round, or None when SecAgg is off."""
        if self._secagg is None:
            return None
        from researcher.secure_round import SecureRound, check_secagg_configuration

        check_secagg_configuration(self._secagg, self._aggregator)
        return SecureRound(self._secagg, self._id, round_number, selected)

    def _unmask_round(
        self, secure: Any, outcome: Any, round_number: int, aux_sum: dict[str, Any]
    ) -> None:
        """Recover from dropouts if needed, then fold the unmasked sums into the aggregates."""
        from researcher.round import run_secagg_corrections

        failed = [node_id for node_id in secure.nodes if node_id not in outcome.answered]
        if failed:
            survivors = secure.declare_dropped(failed)
            log.warning(
                "round %d: SecAgg recovering the sum of %d survivor(s) without %s",
                round_number,
                len(survivors),
                ", ".join(secure.nodes[n].label for n in failed),
            )
            corrections = run_secagg_corrections(
                self._server,
                self._id,
                round_number,
                survivors,
                secure.session_id,
                failed,
                secure.masked_names(),
                self._training_args.round_timeout,
                lambda reply: secure.add_correction(reply.node_id, reply.arrays),
            )
            if corrections.failures:
                raise RoundFailedError(
                    "SecAgg could not recover the round after dropouts: "
                    + "; ".join(
                        f"{secure.nodes[k].label}: {v}" for k, v in corrections.failures.items()
                    )
                )
        assert self._global_params is not None
        result = secure.result({k: v.dtype for k, v in self._global_params.items()})
        if result.param_sums is not None:
            self._aggregator.add_sums(result.param_sums, result.total_samples)
        aux_sum.update(result.aux)

    def _fold_aux_vars(self, aux_sum: dict[str, Any], reply: NodeReply) -> None:
        from common.optimizers.aux_codec import decode_aux_vars

        aux = decode_aux_vars(reply.aux_vars, reply.arrays, "numpy")
        for module, value in aux.items():
            aux_sum[module] = value if module not in aux_sum else aux_sum[module] + value

    def _apply_agg_optimizer(
        self, aggregated: dict[str, np.ndarray], aux_sum: dict[str, Any]
    ) -> dict[str, np.ndarray]:
        if self._researcher_optimizer is None:
            if aux_sum:
                raise RoundFailedError(
                    f"nodes sent auxiliary variables for {sorted(aux_sum)} but the experiment has no "
                    "agg_optimizer to use them: set agg_optimizer=Optimizer(..., modules=[ScaffoldServerModule()])"
                )
            return aggregated
        assert self._global_params is not None
        plan = self._ensure_plan()
        trainable = set(plan.trainable_parameter_names())
        g_train = {k: v for k, v in self._global_params.items() if k in trainable}
        a_train = {k: v for k, v in aggregated.items() if k in trainable}
        stepped = self._researcher_optimizer.step(g_train, a_train, aux_sum or None)
        return {k: (stepped[k] if k in trainable else v) for k, v in aggregated.items()}

    def _commit_round(
        self,
        round_number: int,
        new_params: dict[str, np.ndarray],
        replies: dict[str, dict[str, Any]],
        record: RoundRecord,
    ) -> None:
        """Adopt the round's result, append its metrics and checkpoint it (signals held)."""
        self._global_params = new_params
        self._round = round_number
        if self._plan is not None:
            self._plan.set_parameters(new_params)
        self._aggregated.record(round_number, new_params)
        self._replies[round_number] = replies
        self._history.append(record)
        MetricsLog(self.experimentation_folder() / METRICS_FILE).append(record)
        self.breakpoint()

    def _save_final(self) -> None:
        folder = self.experimentation_folder()
        folder.mkdir(parents=True, exist_ok=True)
        assert self._global_params is not None
        path = folder / FINAL_PARAMS_FILE
        tmp = folder / "final_params.tmp.npz"
        np.savez(tmp, **self._global_params)
        tmp.replace(path)
        log.info(
            "final global parameters written to %s; metrics in %s", path, folder / METRICS_FILE
        )
