"""Training-loop adapters: one interface for the node's training code, whatever the optimizer.

A training plan's `init_optimizer()` returns a fedloom `Optimizer` (declearn) or, for torch, a
native `torch.optim.Optimizer`. The node wraps it with `make_torch_optimizer` or
`NumpyTrainingOptimizer` and drives a round through `TrainingOptimizer`:

```python
opt = make_torch_optimizer(model, plan_optimizer)
opt.import_state(meta, arrays)          # state saved by the node last round, if any
opt.process_aux_var(aux_from_researcher)
opt.init_round()
for batch in data:
    opt.zero_grad(); loss(batch).backward(); opt.step()
aux_to_researcher = opt.collect_aux_var()
meta, arrays = opt.export_state()       # JSON + arrays, persisted by the node
```
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from declearn.model.api import Vector
from declearn.model.sklearn import NumpyVector
from declearn.model.torch import TorchVector
from declearn.optimizer.modules import AuxVar

from common.errors import ConfigurationError, PayloadError, PlanError
from common.optimizers.optimizer import Optimizer
from common.optimizers.state_codec import decode_state, encode_state
from common.optimizers.targets import check_same_keys
from common.optimizers.torch_fused import FusedTorchStep
from common.optimizers.vectors import VectorKind

__all__ = [
    "DeclearnTorchOptimizer",
    "NativeTorchOptimizer",
    "NumpyTrainingOptimizer",
    "TorchTarget",
    "TrainingOptimizer",
    "make_torch_optimizer",
]

logger = logging.getLogger(__name__)

#: Marks optimizer states written by `NativeTorchOptimizer.export_state`.
NATIVE_TORCH_FORMAT = "torch"


@runtime_checkable
class TrainingOptimizer(Protocol):
    """What the node's training loop calls, for any framework and optimizer."""

    def init_round(self) -> None:
        """Mark the start of a training round (before its first step)."""
        ...

    def zero_grad(self) -> None:
        """Forget the gradients of the previous step."""
        ...

    def step(self) -> None:
        """Update the model from the current gradients (torch: after `loss.backward()`)."""
        ...

    def collect_aux_var(self) -> dict[str, AuxVar]:
        """Aux vars to send to the researcher at the end of the round."""
        ...

    def process_aux_var(self, aux: Mapping[str, AuxVar]) -> None:
        """Take the aux vars the researcher sent with the train request."""
        ...

    def export_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Optimizer state as (JSON-able metadata, named arrays) for the node to persist."""
        ...

    def import_state(self, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        """Restore a state returned by `export_state` (in an earlier round or process)."""
        ...


class TorchTarget:
    """The trainable parameters of a torch module, as declearn's Optimizer reads and updates them."""

    def __init__(self, params: Mapping[str, torch.nn.Parameter]) -> None:
        self._params = dict(params)

    @property
    def params(self) -> dict[str, torch.nn.Parameter]:
        """The wrapped parameters by name."""
        return dict(self._params)

    def get_weights(self, trainable: bool = False) -> TorchVector:
        """Copies of the parameters (regularizers such as FedProx keep references to them)."""
        return TorchVector({name: p.detach().clone() for name, p in self._params.items()})

    def apply_updates(self, updates: Vector[Any]) -> None:
        """Add `updates` (a TorchVector) to the parameters in place."""
        if not isinstance(updates, TorchVector):
            raise PayloadError(
                f"torch parameters need TorchVector updates, got {type(updates).__name__}"
            )
        check_same_keys(self._params, updates.coefs, "updates")
        with torch.no_grad():
            for name, update in updates.coefs.items():
                param = self._params[name]
                param.add_(update.to(device=param.device, dtype=param.dtype))


class _DeclearnAdapter:
    """What both declearn-driven adapters share: the round start, aux vars and state export."""

    _optimizer: Optimizer

    @property
    def optimizer(self) -> Optimizer:
        """The wrapped fedloom Optimizer."""
        return self._optimizer

    def init_round(self) -> None:
        """Mark the start of a round: schedulers and round-level plug-in state advance."""
        self._optimizer.init_round()

    def collect_aux_var(self) -> dict[str, AuxVar]:
        """Aux vars of the optimizer's modules for the researcher (e.g. Scaffold deltas)."""
        return self._optimizer.collect_aux_var()

    def process_aux_var(self, aux: Mapping[str, AuxVar]) -> None:
        """Give the researcher's aux vars (decoded as this adapter's Vector kind) to the modules."""
        self._optimizer.process_aux_var(aux)

    def export_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The declearn optimizer state as (JSON-able metadata, arrays)."""
        return self._optimizer.export_state()


class DeclearnTorchOptimizer(_DeclearnAdapter):
    """Trains a torch module with a fedloom (declearn) Optimizer, reading `.grad` after backward.

    The parameters updated are those with `requires_grad` when the adapter is built. A
    parameter that got no gradient in a step (unused in the forward pass) counts as a zero
    gradient, so module states keep one entry per parameter.

    Steps run as fused in-place torch kernels (`torch_fused.FusedTorchStep`) when every
    plug-in of the optimizer has one and the gradients are dense; otherwise, or with
    `fused=False`, as declearn's generic Vector arithmetic. Both share the same state.
    """

    vector_kind: VectorKind = "torch"

    def __init__(self, model: torch.nn.Module, optimizer: Optimizer, *, fused: bool = True) -> None:
        params = {name: p for name, p in model.named_parameters() if p.requires_grad}
        if not params:
            raise PlanError(
                f"{type(model).__name__} has no trainable parameter (requires_grad=True): "
                "nothing to optimize"
            )
        self._target = TorchTarget(params)
        self._optimizer = optimizer
        self._fused = FusedTorchStep.for_optimizer(optimizer) if fused else None

    @property
    def fused(self) -> bool:
        """Whether steps run as fused torch kernels (False: declearn's generic path)."""
        return self._fused is not None

    def zero_grad(self) -> None:
        """Drop the parameters' gradients (set them to None, as torch does by default)."""
        for param in self._target.params.values():
            param.grad = None

    def step(self) -> None:
        """Update the parameters in place from their current `.grad` values."""
        params = self._target.params
        if self._fused is not None and FusedTorchStep.accepts(
            {n: p.grad for n, p in params.items()}
        ):
            self._fused.step(params)
            return
        grads = {
            name: (torch.zeros_like(p) if p.grad is None else p.grad.detach().clone())
            for name, p in self._target.params.items()
        }
        self._optimizer.apply_gradients(self._target, TorchVector(grads))

    def import_state(self, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        """Restore a declearn optimizer state, rebuilding Vectors as TorchVectors."""
        if meta.get("format") == NATIVE_TORCH_FORMAT:
            raise ConfigurationError(
                "the saved optimizer state comes from a native torch optimizer but the plan now "
                "returns a declearn Optimizer: discard the saved state to start afresh"
            )
        self._optimizer.import_state(meta, arrays, vector_kind="torch")


class NativeTorchOptimizer:
    """Trains with a plan's own `torch.optim.Optimizer`; it exchanges no aux vars."""

    vector_kind: VectorKind = "torch"

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self._optimizer = optimizer

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The wrapped torch optimizer."""
        return self._optimizer

    def init_round(self) -> None:
        """Nothing to do: torch optimizers have no notion of rounds (their state persists)."""
        logger.debug("round start: %s has no round-level state", type(self._optimizer).__name__)

    def zero_grad(self) -> None:
        """Delegate to the torch optimizer."""
        self._optimizer.zero_grad()

    def step(self) -> None:
        """Delegate to the torch optimizer."""
        self._optimizer.step()

    def collect_aux_var(self) -> dict[str, AuxVar]:
        """Always empty: native torch optimizers exchange no aux vars."""
        return {}

    def process_aux_var(self, aux: Mapping[str, AuxVar]) -> None:
        """Refuse aux vars: a native torch optimizer cannot use them."""
        if aux:
            raise ConfigurationError(
                f"the researcher sent aux vars {sorted(aux)} but the plan trains with "
                f"torch.optim.{type(self._optimizer).__name__}, which cannot use them: return "
                "Optimizer(lr=..., modules=[ScaffoldClientModule()]) (or the module matching the "
                "researcher's) from init_optimizer()"
            )

    def export_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The torch optimizer's `state_dict()` as (JSON-able metadata, arrays)."""
        tree, arrays = encode_state(self._optimizer.state_dict(), prefix="optim")
        meta = {
            "format": NATIVE_TORCH_FORMAT,
            "class": type(self._optimizer).__name__,
            "state": tree,
        }
        return meta, arrays

    def import_state(self, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        """Load a `state_dict()` saved by `export_state` into the torch optimizer."""
        name = type(self._optimizer).__name__
        if meta.get("format") != NATIVE_TORCH_FORMAT or meta.get("class") != name:
            saved = meta.get("class") or meta.get("format")
            raise ConfigurationError(
                f"the saved optimizer state comes from {saved!r} but the plan now returns "
                f"torch.optim.{name}: discard the saved state to start afresh"
            )
        state = decode_state(meta["state"], arrays)
        try:
            self._optimizer.load_state_dict(state)
        except (KeyError, ValueError, TypeError) as exc:
            raise ConfigurationError(
                f"cannot load the saved torch.optim.{name} state ({exc}): the model's parameters "
                "changed; discard the saved state to start afresh"
            ) from exc


def make_torch_optimizer(
    model: torch.nn.Module, optimizer: Optimizer | torch.optim.Optimizer
) -> DeclearnTorchOptimizer | NativeTorchOptimizer:
    """Wrap a plan's optimizer for the node's torch training loop."""
    if isinstance(optimizer, Optimizer):
        return DeclearnTorchOptimizer(model, optimizer)
    if isinstance(optimizer, torch.optim.Optimizer):
        model_params = {id(p) for p in model.parameters()}
        opt_params = [p for group in optimizer.param_groups for p in group["params"]]
        if not any(id(p) in model_params for p in opt_params):
            raise PlanError(
                f"torch.optim.{type(optimizer).__name__} was built on parameters that are not "
                "the model's: build it in init_optimizer() from self.model().parameters()"
            )
        return NativeTorchOptimizer(optimizer)
    raise ConfigurationError(
        f"init_optimizer() returned a {type(optimizer).__name__}: return "
        "common.optimizers.optimizer.Optimizer or a torch.optim.Optimizer"
    )


class NumpyTrainingOptimizer(_DeclearnAdapter):
    """Trains numpy weights (scikit-learn plans) with a fedloom Optimizer.

    The plan computes gradients itself and either calls `step_with_gradients(grads)` or
    `set_gradients(grads)` then `step()`. `get_weights`/`set_weights` read and write the
    model's weights as `dict[str, np.ndarray]`.
    """

    vector_kind: VectorKind = "numpy"

    def __init__(
        self,
        get_weights: Callable[[], Mapping[str, np.ndarray]],
        set_weights: Callable[[dict[str, np.ndarray]], None],
        optimizer: Optimizer,
    ) -> None:
        if not isinstance(optimizer, Optimizer):
            raise ConfigurationError(
                f"init_optimizer() returned a {type(optimizer).__name__}: scikit-learn plans "
                "need common.optimizers.optimizer.Optimizer"
            )
        self._get_weights = get_weights
        self._set_weights = set_weights
        self._optimizer = optimizer
        self._gradients: NumpyVector | None = None

    def zero_grad(self) -> None:
        """Forget gradients given and not yet used."""
        self._gradients = None

    def set_gradients(self, gradients: Mapping[str, np.ndarray] | NumpyVector) -> None:
        """Give the gradients the next `step()` applies."""
        self._gradients = (
            gradients if isinstance(gradients, NumpyVector) else NumpyVector(dict(gradients))
        )

    def step(self) -> None:
        """Update the weights from the gradients given by `set_gradients`."""
        if self._gradients is None:
            raise PlanError(
                "step() was called with no gradients: call set_gradients(grads) first, or "
                "step_with_gradients(grads)"
            )
        new_weights = self._optimizer.step_numpy(self._get_weights(), self._gradients)
        self._set_weights(new_weights)
        self._gradients = None

    def step_with_gradients(self, gradients: Mapping[str, np.ndarray] | NumpyVector) -> None:
        """Update the weights from `gradients` in one call."""
        self.set_gradients(gradients)
        self.step()

    def import_state(self, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        """Restore a declearn optimizer state, rebuilding Vectors as NumpyVectors."""
        self._optimizer.import_state(meta, arrays, vector_kind="numpy")
