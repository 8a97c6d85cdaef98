"""The training-plan API shared by every framework (Fed-BioMed's shape)."""

from __future__ import annotations

import abc
import inspect
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.data import DataManager
from common.errors import PlanError
from common.training_args import TrainingArgs
from common.training_plans.personalization import ParameterTags, resolve_tags

__all__ = ["BaseTrainingPlan", "LocalTrainingResult"]

log = logging.getLogger(__name__)


@dataclass
class LocalTrainingResult:
    """What one round of local training produced on a node."""

    n_samples: int
    n_steps: int
    losses: list[float] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    #: Under record-level DP: this round's DP-SGD steps (common.privacy.DpSteps) and the
    #: ε the experiment has spent on this node after it.
    dp: Any = None
    dp_epsilon: float | None = None


def call_with_optional_arg(method: Callable[..., Any], arg: Any) -> Any:
    """Call a user hook written either as `f(self)` or `f(self, args)`."""
    params = [
        p
        for p in inspect.signature(method).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return method(arg) if params else method()


class BaseTrainingPlan(abc.ABC):
    """A class the researcher writes; its source runs on the nodes.

    Subclasses define `init_model`, `init_optimizer` (optional), `training_data` and,
    for torch, `training_step`. The node sets `dataset_path` before calling `training_data()`.
    """

    #: "torch" or "numpy": the declearn Vector kind aux vars are decoded into for this plan.
    vector_kind: str = "numpy"

    #: Name patterns of parameters that never leave the node (common.training_plans.personalization).
    local_parameters: tuple[str, ...] = ()
    #: Name patterns of parameters sent and aggregated, but trained from the node's own copy.
    persistent_parameters: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.dataset_path: str | None = None
        # The registered dataset's type, target and settings, set by the node with the path.
        self.dataset_type: str | None = None
        self.dataset_target: str | None = None
        self.dataset_options: dict[str, str] = {}
        self._model_args: dict[str, Any] = {}
        self._training_args = TrainingArgs()

    # -- hooks the researcher may override -------------------------------------------
    def init_dependencies(self) -> list[str]:
        """Import lines the plan needs on the node (e.g. 'import torch')."""
        return []

    @abc.abstractmethod
    def training_data(self) -> DataManager:
        """Load the node's dataset (at `self.dataset_path`) and return a DataManager."""

    def load_dataset(self, **kwargs: Any) -> Any:
        """The node's dataset loaded by its type: a DataFrame (csv), an array (npy), a dict of
        arrays (npz), an ``ImageFolderDataset`` (images) or a ``MedicalFolderDataset``
        (medical-folder). ``kwargs`` go to the loader (e.g. ``transform=``)."""
        from common.datasets import DATASET_TYPES

        if self.dataset_path is None or self.dataset_type is None:
            raise PlanError(
                "load_dataset() runs on a node, which sets the dataset; call it from training_data()"
            )
        kind = DATASET_TYPES.build(self.dataset_type)
        return kind.load(
            Path(self.dataset_path), self.dataset_target, self.dataset_options, **kwargs
        )

    # -- lifecycle ---------------------------------------------------------------------
    def model_args(self) -> dict[str, Any]:
        return dict(self._model_args)

    def training_args(self) -> TrainingArgs:
        return self._training_args

    @abc.abstractmethod
    def post_init(self, model_args: Mapping[str, Any], training_args: TrainingArgs) -> None:
        """Build the model and the optimizer; called on the researcher and on the nodes."""

    @abc.abstractmethod
    def get_parameters(self) -> dict[str, np.ndarray]:
        """The parameters that travel, as numpy arrays (copies safe to keep)."""

    def parameter_views(self) -> Mapping[str, np.ndarray]:
        """The parameters that travel, possibly views over the model itself (no copy): read
        them before the model changes again. Default: `get_parameters()`."""
        return self.get_parameters()

    @abc.abstractmethod
    def set_parameters(self, params: Mapping[str, np.ndarray]) -> None:
        """Load parameters received from the researcher."""

    def trainable_parameter_names(self) -> list[str]:
        """Names of the parameters an optimizer updates (default: all of them)."""
        return list(self.get_parameters())

    def parameter_names(self) -> list[str]:
        """Names of every parameter `get_parameters()` returns."""
        return list(self.get_parameters())

    def parameter_tags(self) -> ParameterTags:
        """The plan's local and persistent parameter names, resolved from its patterns."""
        return resolve_tags(
            type(self).__name__,
            self.parameter_names(),
            self.local_parameters,
            self.persistent_parameters,
        )

    def shared_parameters(self) -> dict[str, np.ndarray]:
        """The parameters that may leave the node: all but the local ones (the global model)."""
        return self.parameter_tags().shared(self.get_parameters())

    def set_shared_parameters(self, params: Mapping[str, np.ndarray]) -> None:
        """Load a global model, which has no local parameters: those keep their values."""
        local = self.parameter_tags().local - set(params)
        if local:
            current = self.get_parameters()
            params = {**{k: current[k] for k in local}, **params}
        self.set_parameters(params)

    @abc.abstractmethod
    def training_optimizer(self) -> Any:
        """The node-side optimizer adapter (common.optimizers.adapters.TrainingOptimizer)."""

    def optimizer_spec(self) -> dict[str, Any] | None:
        """The declearn optimizer's spec, or None for a framework-native optimizer."""
        return None

    def uses_native_optimizer(self) -> bool:
        """True when the plan trains with a framework-native optimizer (e.g. torch.optim)."""
        return False

    @abc.abstractmethod
    def train_round(self, data: DataManager, optimizer: Any) -> LocalTrainingResult:
        """Run one round of local training on `data` with the adapter from `training_optimizer()`."""

    def local_batches(
        self, data: DataManager, rng: np.random.Generator
    ) -> Iterator[tuple[np.ndarray, Any]]:
        """The round's batches: `num_updates` steps (cycling over epochs) or `epochs` epochs.

        `dry_run` stops after one batch.
        """
        args = self._training_args
        steps = 0
        epoch = 0
        while True:
            for batch in data.batches(args.batch_size, rng):
                yield batch
                steps += 1
                if args.dry_run or (args.num_updates is not None and steps >= args.num_updates):
                    return
            epoch += 1
            if args.num_updates is None and epoch >= args.effective_epochs:
                return

    def report_step(self, step: int, loss: float) -> None:
        """Log the loss of local step `step` (1-based) every `log_interval` steps."""
        interval = self._training_args.log_interval
        if interval and step % interval == 0:
            log.info("local step %d: training loss %.6g", step, loss)

    def evaluate(self, data: DataManager) -> dict[str, float]:
        """Validation metrics on `data` (plans may override; default: none)."""
        return {}

    def _load_training_data(self) -> DataManager:
        data = self.training_data()
        if not isinstance(data, DataManager):
            raise PlanError(
                f"{type(self).__name__}.training_data() returned {type(data).__name__}; "
                "return common.data.DataManager(dataset=..., target=...)"
            )
        return data

    def run_local_training(
        self, optimizer: Any, personal: Mapping[str, np.ndarray] | None = None
    ) -> LocalTrainingResult:
        """Load data, split off the test part, validate and train one round with `optimizer`.

        `personal` (plans with local or persistent parameters) is the node's own copy of
        them: loaded over the global model after its validation, then validated again as
        `personalized_*`, before training. Empty in a node's first round.
        """
        args = self._training_args
        seed = 0 if args.random_seed is None else args.random_seed
        data = self._load_training_data()
        train, test = data.split(args.test_ratio, seed)
        start = time.perf_counter()
        metrics: dict[str, float] = {}
        if test is not None and args.test_on_global_updates:
            metrics.update({f"global_{k}": v for k, v in self.evaluate(test).items()})
        if personal is not None:
            if personal:
                self.set_parameters({**self.get_parameters(), **personal})
            if test is not None and args.test_on_global_updates:
                metrics.update({f"personalized_{k}": v for k, v in self.evaluate(test).items()})
        result = self.train_round(train, optimizer)
        if test is not None and args.test_on_local_updates:
            metrics.update({f"local_{k}": v for k, v in self.evaluate(test).items()})
        result.metrics.update(metrics)
        result.seconds = time.perf_counter() - start
        return result
