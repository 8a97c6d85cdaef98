"""`Optimizer`: fedloom's front to declearn's gradient-descent Optimizer, on nodes and researcher.

```python
from common.optimizers.optimizer import Optimizer
from common.optimizers.declearn import AdamModule, RidgeRegularizer

Optimizer(lr=0.01, modules=[AdamModule()], regularizers=[RidgeRegularizer()])
Optimizer(lr=0.01, modules=["adam", ("momentum", {"beta": 0.8})], regularizers=["ridge"])
```

One update is declearn's: regularizers (in order) add their terms to the gradients, modules
(in order) transform them, the learning rate scales the result, decoupled weight decay adds
`decay * weights`, and the weights move by minus that.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from declearn.model.api import Vector
from declearn.model.sklearn import NumpyVector
from declearn.optimizer import Optimizer as DeclearnOptimizer
from declearn.optimizer.modules import AuxVar, OptiModule
from declearn.optimizer.schedulers import Scheduler

from common.errors import ConfigurationError, PayloadError
from common.optimizers.specs import (
    PluginSpec,
    RateSpec,
    build_modules,
    build_rate,
    build_regularizers,
    describe_plugin,
    describe_rate,
)
from common.optimizers.state_codec import decode_state, encode_state
from common.optimizers.targets import NumpyTarget, UpdateTarget, check_same_keys
from common.optimizers.vectors import VectorKind

__all__ = ["Optimizer"]

logger = logging.getLogger(__name__)

#: Marks optimizer states written by `Optimizer.export_state` (vs. native torch states).
STATE_FORMAT = "declearn"

_SPEC_KEYS = frozenset({"lr", "decay", "modules", "regularizers"})


class _RoundSyncedOptimizer(DeclearnOptimizer):
    """declearn's Optimizer whose pending rates are recomputed on round start and state load.

    declearn computes the rate of the next step right after each step (and in `__init__`, when
    the round counter is still -1). Left alone, a round-level schedule would use the previous
    round's value for the first step of every round, and an optimizer rebuilt on a node and
    given its saved state would use its construction-time rate for its first step. Both are
    fixed by re-evaluating the pending rates at the scheduler's current (step, round); the
    scheduler's `steps` counter already includes that pending step, hence `steps - 1`.
    """

    #: How many times `get_state` handed out references to the module states.
    state_exports = 0

    def start_round(self) -> None:
        super().start_round()
        self._resync_rates()

    def get_state(self) -> dict[str, Any]:
        # Fused torch steps update states in place; this count tells them to copy first.
        self.state_exports += 1
        return super().get_state()

    def advance_rates(self) -> None:
        """Move the schedulers one step on, as declearn does after computing an update."""
        self._update_rates()

    def set_state(self, states: dict[str, Any]) -> None:
        super().set_state(states)
        self._resync_rates()

    def _resync_rates(self) -> None:
        self._lrate = self._pending_rate(self._lrate_scheduler)
        self._wrate = self._pending_rate(self._wrate_scheduler)

    @staticmethod
    def _pending_rate(scheduler: Scheduler) -> float:
        return scheduler.compute_value(step=max(scheduler.steps - 1, 0), round_=scheduler.rounds)


def _uses_aux_vars(module: OptiModule[Any]) -> bool:
    cls = type(module)
    return (
        cls.collect_aux_var is not OptiModule.collect_aux_var
        or cls.process_aux_var is not OptiModule.process_aux_var
    )


class Optimizer:
    """A declearn gradient-descent optimizer: learning rate, weight decay, modules, regularizers.

    `lr` and `decay` are numbers or declearn schedulers (instances, `[name, config]` or
    `{"name", "config"}`). `modules` and `regularizers` are chained in order; each entry is an
    instance, a class, a name ('adam') or `[name, config]`. Without modules this is plain SGD.
    Call `init_round()` at the start of every round so schedulers and per-round plug-in
    state (FedProx reference weights, `round_reset` modules) advance.
    """

    def __init__(
        self,
        lr: RateSpec,
        decay: RateSpec = 0.0,
        modules: Iterable[PluginSpec] | None = (),
        regularizers: Iterable[PluginSpec] | None = (),
    ) -> None:
        self._lr = build_rate(lr, "lr")
        self._decay = build_rate(decay, "decay")
        built_modules = build_modules(modules)
        built_regularizers = build_regularizers(regularizers)
        self._check_unique_aux_names(built_modules)
        self._optimizer = _RoundSyncedOptimizer(
            lrate=self._lr,
            w_decay=self._decay,
            regularizers=built_regularizers,
            modules=built_modules,
        )

    @staticmethod
    def _check_unique_aux_names(modules: list[OptiModule[Any]]) -> None:
        seen: dict[str, str] = {}
        for module in modules:
            if not _uses_aux_vars(module):
                continue
            key = module.aux_name or module.name
            if key in seen:
                raise ConfigurationError(
                    f"modules {seen[key]!r} and {module.name!r} both exchange aux vars under "
                    f"{key!r}: keep only one of them"
                )
            seen[key] = module.name

    # ------------------------------------------------------------------ description

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> Optimizer:
        """Build an optimizer from a spec dict (`to_spec()`'s output, or a TOML table)."""
        if not isinstance(spec, Mapping):
            raise ConfigurationError(f"an optimizer spec must be a table/dict, got {spec!r}")
        unknown = set(spec) - _SPEC_KEYS
        if unknown:
            raise ConfigurationError(
                f"unknown optimizer setting(s) {sorted(unknown)}; allowed: {sorted(_SPEC_KEYS)}"
            )
        if "lr" not in spec:
            raise ConfigurationError("an optimizer spec needs 'lr' (a number or a scheduler)")
        return cls(
            lr=spec["lr"],
            decay=spec.get("decay", 0.0),
            modules=spec.get("modules", ()),
            regularizers=spec.get("regularizers", ()),
        )

    def to_spec(self) -> dict[str, Any]:
        """Describe this optimizer as JSON-able data that `from_spec` turns back into one."""
        return {
            "lr": describe_rate(self._lr),
            "decay": describe_rate(self._decay),
            "modules": [describe_plugin(module) for module in self._optimizer.modules],
            "regularizers": [describe_plugin(reg) for reg in self._optimizer.regularizers],
        }

    def __repr__(self) -> str:
        spec = self.to_spec()
        return (
            f"Optimizer(lr={spec['lr']!r}, decay={spec['decay']!r}, "
            f"modules={self.module_names!r}, regularizers={self.regularizer_names!r})"
        )

    @property
    def declearn_optimizer(self) -> DeclearnOptimizer:
        """The wrapped declearn Optimizer (for inspection; prefer this class's methods)."""
        return self._optimizer

    @property
    def lr(self) -> float:
        """The learning rate the next step will use."""
        return float(self._optimizer.lrate)

    @property
    def module_names(self) -> list[str]:
        """Names of the chained OptiModules, in order (e.g. ['adam', 'momentum'])."""
        return [module.name for module in self._optimizer.modules]

    @property
    def regularizer_names(self) -> list[str]:
        """Names of the chained Regularizers, in order (e.g. ['lasso', 'ridge'])."""
        return [reg.name for reg in self._optimizer.regularizers]

    @property
    def aux_var_names(self) -> list[str]:
        """Keys under which modules exchange aux vars (e.g. ['scaffold']), in module order."""
        return [
            module.aux_name or module.name
            for module in self._optimizer.modules
            if _uses_aux_vars(module)
        ]

    @property
    def uses_aux_vars(self) -> bool:
        """Whether any module exchanges aux vars with the other side (e.g. Scaffold)."""
        return bool(self.aux_var_names)

    def aux_var_modules(self) -> dict[str, str]:
        """Map each aux-var key to the name of the module using it ('scaffold' -> 'scaffold-client')."""
        return {
            (module.aux_name or module.name): module.name
            for module in self._optimizer.modules
            if _uses_aux_vars(module)
        }

    # ---------------------------------------------------------------------- training

    @property
    def state_exports(self) -> int:
        """How many times the module states were read out (fused steps copy after each)."""
        return self._optimizer.state_exports

    def advance_rates(self) -> None:
        """Advance the schedulers past one step (for steps computed outside declearn)."""
        self._optimizer.advance_rates()

    def init_round(self) -> None:
        """Mark the start of a training round (schedulers, FedProx, `round_reset` modules)."""
        self._optimizer.start_round()

    def apply_gradients(self, target: UpdateTarget, gradients: Vector[Any]) -> None:
        """Take one step: turn `gradients` into updates with declearn and apply them to `target`."""
        self._optimizer.apply_gradients(target, gradients)  # type: ignore[arg-type]

    def step_numpy(
        self,
        weights: Mapping[str, np.ndarray],
        gradients: Mapping[str, np.ndarray] | NumpyVector,
    ) -> dict[str, np.ndarray]:
        """Take one step on numpy weights; return new arrays (inputs untouched, dtypes kept)."""
        grads = gradients if isinstance(gradients, NumpyVector) else NumpyVector(dict(gradients))
        check_same_keys(weights, grads.coefs, "gradients")
        target = NumpyTarget(weights)
        self.apply_gradients(target, grads)
        return target.weights

    # ---------------------------------------------------------------------- aux vars

    def collect_aux_var(self) -> dict[str, AuxVar]:
        """Aux vars to send to the other side, keyed by module aux name ('scaffold')."""
        return self._optimizer.collect_aux_var()

    def process_aux_var(self, aux: Mapping[str, AuxVar]) -> None:
        """Hand aux vars received from the other side (already aggregated) to their modules."""
        own = self.aux_var_modules()
        unknown = sorted(set(aux) - set(own))
        if unknown:
            raise ConfigurationError(
                f"received aux vars for {unknown} but this optimizer's modules "
                f"{self.module_names} only use {sorted(own)}: pair each aux-var module with its "
                "counterpart on the other side (e.g. ScaffoldClientModule in the training plan's "
                "optimizer with ScaffoldServerModule in the researcher's)"
            )
        try:
            self._optimizer.process_aux_var(dict(aux))
        except (KeyError, TypeError, ValueError) as exc:
            raise PayloadError(
                f"aux vars {sorted(aux)} were refused by modules {self.module_names}: {exc}"
            ) from exc

    # ------------------------------------------------------------------------- state

    def get_state(self) -> dict[str, Any]:
        """declearn's state of this optimizer (module states as Vectors, scheduler counters)."""
        return self._optimizer.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore a state from `get_state()` of an optimizer with the same modules."""
        try:
            self._optimizer.set_state(state)
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigurationError(
                f"cannot restore this optimizer's state ({exc}): it was saved by an optimizer "
                "with other modules or schedulers; discard the saved state to start afresh"
            ) from exc

    def export_state(self, prefix: str = "optim") -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Return (JSON-able metadata, arrays named `{prefix}/N`) to persist this state."""
        tree, arrays = encode_state(self.get_state(), prefix=prefix)
        return {"format": STATE_FORMAT, "spec": self.to_spec(), "state": tree}, arrays

    def import_state(
        self,
        meta: Mapping[str, Any],
        arrays: Mapping[str, np.ndarray],
        vector_kind: VectorKind,
    ) -> None:
        """Restore what `export_state` returned, with Vectors rebuilt as `vector_kind`."""
        if meta.get("format") != STATE_FORMAT:
            raise ConfigurationError(
                f"the saved optimizer state has format {meta.get('format')!r}, not "
                f"{STATE_FORMAT!r} (the optimizer type changed): discard the saved state"
            )
        saved = meta.get("spec", {})
        saved_modules = [entry[0] for entry in saved.get("modules", [])]
        saved_regs = [entry[0] for entry in saved.get("regularizers", [])]
        if saved_modules != self.module_names or saved_regs != self.regularizer_names:
            raise ConfigurationError(
                f"the saved optimizer state is for modules {saved_modules} and regularizers "
                f"{saved_regs}, but the optimizer now has {self.module_names} and "
                f"{self.regularizer_names}: discard the saved state to start afresh"
            )
        self.set_state(decode_state(meta["state"], arrays, vector_kind))
        logger.debug("restored optimizer state for modules %s", self.module_names)
