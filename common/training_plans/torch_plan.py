"""TorchTrainingPlan: a PyTorch model trained on the node with a torch or declearn optimizer."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from common.data import DataManager
from common.errors import PlanError
from common.training_args import TrainingArgs
from common.training_plans.base import BaseTrainingPlan, LocalTrainingResult, call_with_optional_arg
from common.training_plans.metrics import classification_or_regression_metrics

__all__ = ["TorchTrainingPlan"]


class TorchTrainingPlan(BaseTrainingPlan):
    """Subclass and define `init_model`, `training_data`, `training_step`, optionally
    `init_optimizer` (default: declearn SGD with lr=0.01) and `testing_step`."""

    vector_kind = "torch"

    def __init__(self) -> None:
        super().__init__()
        self._model: torch.nn.Module | None = None
        self._optimizer: Any = None

    # -- user hooks ---------------------------------------------------------------------
    def init_model(self, model_args: Mapping[str, Any] | None = None) -> torch.nn.Module:
        raise PlanError(
            f"{type(self).__name__} must define init_model() returning a torch.nn.Module"
        )

    def init_optimizer(self, optimizer_args: Mapping[str, Any] | None = None) -> Any:
        from common.optimizers.optimizer import Optimizer

        return Optimizer(lr=0.01)

    def training_step(self, data: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise PlanError(
            f"{type(self).__name__} must define training_step(data, target) returning the loss"
        )

    # -- accessors in Fed-BioMed's style ----------------------------------------------------
    def model(self) -> torch.nn.Module:
        if self._model is None:
            raise PlanError("the model is not built yet: post_init() builds it from init_model()")
        return self._model

    def optimizer(self) -> Any:
        return self._optimizer

    # -- lifecycle ------------------------------------------------------------------------
    def post_init(self, model_args: Mapping[str, Any], training_args: TrainingArgs) -> None:
        self._model_args = dict(model_args)
        self._training_args = training_args
        if training_args.random_seed is not None:
            torch.manual_seed(training_args.random_seed)
        model = call_with_optional_arg(self.init_model, self._model_args)
        if not isinstance(model, torch.nn.Module):
            raise PlanError(
                f"{type(self).__name__}.init_model() returned {type(model).__name__}, not a torch.nn.Module"
            )
        self._model = model
        self.parameter_tags()  # a pattern matching nothing fails here, on the researcher first
        self._optimizer = call_with_optional_arg(self.init_optimizer, {})
        self._check_optimizer()

    def _check_optimizer(self) -> None:
        from common.optimizers.optimizer import Optimizer

        if not isinstance(self._optimizer, Optimizer | torch.optim.Optimizer):
            raise PlanError(
                f"{type(self).__name__}.init_optimizer() returned {type(self._optimizer).__name__}: "
                "return a torch.optim optimizer or common.optimizers.optimizer.Optimizer"
            )

    def optimizer_spec(self) -> dict[str, Any] | None:
        from common.optimizers.optimizer import Optimizer

        return self._optimizer.to_spec() if isinstance(self._optimizer, Optimizer) else None

    def uses_native_optimizer(self) -> bool:
        return isinstance(self._optimizer, torch.optim.Optimizer)

    def get_parameters(self) -> dict[str, np.ndarray]:
        return {name: value.copy() for name, value in self._model_views().items()}

    def parameter_views(self) -> dict[str, np.ndarray]:
        if type(self).get_parameters is not TorchTrainingPlan.get_parameters:
            # A plan that overrides get_parameters decides what travels: honour it.
            return dict(self.get_parameters())
        return self._model_views()

    def _model_views(self) -> dict[str, np.ndarray]:
        """The model's floating tensors as numpy views (no copy)."""
        return {
            name: value.detach().cpu().numpy()
            for name, value in self.model().state_dict().items()
            if value.is_floating_point()
        }

    def parameter_names(self) -> list[str]:
        return [
            name for name, value in self.model().state_dict().items() if value.is_floating_point()
        ]

    def set_parameters(self, params: Mapping[str, np.ndarray]) -> None:
        state = self.model().state_dict()
        expected = {k for k, v in state.items() if v.is_floating_point()}
        missing, extra = expected - set(params), set(params) - expected
        if missing or extra:
            raise PlanError(
                f"parameters do not fit the model: missing {sorted(missing)[:5]}, unexpected "
                f"{sorted(extra)[:5]}; the node and researcher built different models"
            )
        with torch.no_grad(), warnings.catch_warnings():
            # Received arrays are read-only views over the payload buffer; we only read them.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            for name in expected:
                src = torch.from_numpy(np.asarray(params[name]))
                if tuple(src.shape) != tuple(state[name].shape):
                    raise PlanError(
                        f"parameter {name!r} has shape {tuple(src.shape)}, the model expects "
                        f"{tuple(state[name].shape)}"
                    )
                state[name].copy_(src)

    def adopt_parameters(self, params: Mapping[str, np.ndarray]) -> bool:
        """Make the model's floating tensors *be* `params` instead of copying them in.

        `params` are writable arrays (views over the downloaded global model's shared
        mapping): training then updates them in place, so the task neither copies the
        model in nor writes a reply. False, with nothing changed, when the model does not
        fit them exactly (names, shapes, dtypes; contiguous CPU tensors, none sharing
        storage with another, as tied weights do) or the plan overrides how its parameters
        are read or set: the caller then copies them in with `set_parameters`.
        """
        plan_type = type(self)
        if (
            plan_type.get_parameters is not TorchTrainingPlan.get_parameters
            or plan_type.set_parameters is not TorchTrainingPlan.set_parameters
            or plan_type.set_shared_parameters is not BaseTrainingPlan.set_shared_parameters
        ):
            return False
        tensors = {
            name: tensor
            for name, tensor in self.model().state_dict(keep_vars=True).items()
            if tensor.is_floating_point()
        }
        if set(tensors) != set(params):
            return False
        storages = set()
        for name, tensor in tensors.items():
            src = params[name]
            if not (
                tensor.device.type == "cpu"
                and tensor.layout == torch.strided
                and tensor.is_contiguous()
                and tuple(tensor.shape) == src.shape
                and torch.empty(0, dtype=tensor.dtype).numpy().dtype == src.dtype
                and src.flags.writeable
                and src.flags.c_contiguous
            ):
                return False
            storages.add(tensor.untyped_storage().data_ptr())
        if len(storages) != len(tensors):
            return False  # tied weights: two names, one storage; adopting would untie them
        with torch.no_grad():
            for name, tensor in tensors.items():
                tensor.data = torch.from_numpy(params[name])
        return True

    def trainable_parameter_names(self) -> list[str]:
        return [n for n, p in self.model().named_parameters() if p.requires_grad]

    def training_optimizer(self) -> Any:
        from common.optimizers.adapters import make_torch_optimizer

        return make_torch_optimizer(self.model(), self._optimizer)

    # -- training ---------------------------------------------------------------------------
    def train_round(self, data: DataManager, optimizer: Any) -> LocalTrainingResult:
        result: LocalTrainingResult
        if self._training_args.local_dp is not None:
            from common.privacy.dp_sgd import train_round_dp

            result = train_round_dp(self, data, optimizer)
        else:
            result = self._train_steps(data, optimizer)
        # The round's steps are done: free the gradients (a model's size) now, not when the
        # task ends, so the reply written next reuses their memory instead of fresh pages.
        for parameter in self.model().parameters():
            parameter.grad = None
        return result

    def _train_steps(self, data: DataManager, optimizer: Any) -> LocalTrainingResult:
        rng = np.random.default_rng(self._training_args.random_seed)
        model = self.model()
        model.train()
        optimizer.init_round()
        losses: list[float] = []
        for batch_inputs, batch_target in self.local_batches(data, rng):
            inputs, target = _to_tensor(batch_inputs), _to_tensor(batch_target)
            optimizer.zero_grad()
            loss = self.training_step(inputs, target)
            self.check_loss(loss, len(losses) + 1)
            loss.backward()  # type: ignore[no-untyped-call]  # torch leaves it untyped
            optimizer.step()
            losses.append(float(loss.detach()))
            self.report_step(len(losses), losses[-1])
        return LocalTrainingResult(n_samples=len(data), n_steps=len(losses), losses=losses)

    def check_loss(self, loss: Any, step: int) -> None:
        """Refuse a loss that is not a finite scalar tensor (`step` is 1-based, for the message)."""
        if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
            raise PlanError(
                f"{type(self).__name__}.training_step() must return a scalar torch tensor (the loss)"
            )
        if not torch.isfinite(loss):
            raise PlanError(
                f"training loss became {loss.item()} at local step {step}: lower the "
                "learning rate or check the data for NaNs"
            )

    def evaluate(self, data: DataManager) -> dict[str, float]:
        model = self.model()
        model.eval()
        with torch.no_grad():
            inputs, target = _to_tensor(data.inputs), _to_tensor(data.targets)
            if hasattr(self, "testing_step"):
                out = self.testing_step(inputs, target)
                if isinstance(out, dict):
                    return {k: float(v) for k, v in out.items()}
                return {"metric": float(out)}
            loss = self.training_step(inputs, target)
            metrics = {"loss": float(loss)}
            output = model(inputs)
            metrics.update(classification_or_regression_metrics(output.numpy(), data.targets))
            return metrics


def _to_tensor(values: Any) -> Any:
    """Arrays as tensors (float64 as float32); a sample dataset's batches keep their
    structure: dicts and tuples element-wise, tensors as they are, lists of text as lists."""
    if values is None:
        return None
    if isinstance(values, Mapping):
        return {key: _to_tensor(value) for key, value in values.items()}
    if isinstance(values, tuple):
        return tuple(_to_tensor(value) for value in values)
    if isinstance(values, list) and values and isinstance(values[0], str):
        return values
    if isinstance(values, torch.Tensor):
        return values.float() if values.dtype == torch.float64 else values
    array = np.asarray(values)
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    return (
        tensor.float() if tensor.is_floating_point() and tensor.dtype == torch.float64 else tensor
    )
