"""Build declearn plug-ins and rate schedulers from user specs, and describe them back as specs.

A spec is what a user may write in a training plan or a TOML file:

- a rate (`lr`, `decay`): a number, a declearn `Scheduler`, `[name, config]` or
  `{"name": ..., "config": {...}}`;
- a plug-in (OptiModule or Regularizer): an instance, a class, a name, `[name, config]` or
  `{"name": ..., "config": {...}}`.

`describe_*` turn built objects back into JSON-able `[name, config]` specs.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable, Mapping
from typing import Any, cast

import numpy as np
from declearn.optimizer import list_optim_modules as declearn_modules
from declearn.optimizer import list_optim_regularizers as declearn_regularizers
from declearn.optimizer import list_rate_schedulers as declearn_schedulers
from declearn.optimizer.modules import OptiModule
from declearn.optimizer.regularizers import Regularizer
from declearn.optimizer.schedulers import Scheduler

from common.errors import ConfigurationError

__all__ = [
    "PluginSpec",
    "RateSpec",
    "build_modules",
    "build_rate",
    "build_regularizers",
    "describe_plugin",
    "describe_rate",
    "to_jsonable",
]

#: A learning rate or weight decay: a number, a Scheduler, [name, config] or {"name", "config"}.
RateSpec = float | Scheduler | tuple[str, Mapping[str, Any]] | list[Any] | Mapping[str, Any]

#: A plug-in: an instance, a class, a name, [name, config] or {"name", "config"}.
PluginSpec = (
    OptiModule[Any]
    | Regularizer
    | type
    | str
    | tuple[str, Mapping[str, Any]]
    | list[Any]
    | Mapping[str, Any]
)


def _split_named_spec(spec: Any, what: str) -> tuple[str, dict[str, Any]] | None:
    """Return (name, config) for `[name, config]` / `{"name", "config"}` specs, else None."""
    if isinstance(spec, Mapping) and "name" in spec:
        extra = set(spec) - {"name", "config"}
        if extra:
            raise ConfigurationError(
                f"{what} spec {dict(spec)!r} has unknown keys {sorted(extra)}: "
                'write {"name": ..., "config": {...}}'
            )
        name, config = spec["name"], spec.get("config", {})
    elif isinstance(spec, tuple | list) and len(spec) == 2:
        name, config = spec
    else:
        return None
    if not isinstance(name, str) or not isinstance(config, Mapping):
        raise ConfigurationError(
            f"{what} spec {spec!r} is invalid: expected a name (str) and a config (dict)"
        )
    return name, dict(config)


def build_rate(value: RateSpec | Any, what: str) -> float | Scheduler:
    """Turn a learning-rate or weight-decay spec into a float or a declearn Scheduler."""
    if isinstance(value, Scheduler):
        return value
    if isinstance(value, bool):
        raise ConfigurationError(f"{what} must be a number or a scheduler, not a bool ({value})")
    if isinstance(value, int | float | np.integer | np.floating):
        rate = float(value)
        if not math.isfinite(rate) or rate < 0:
            raise ConfigurationError(f"{what} must be a finite number >= 0, got {value}")
        return rate
    named = _split_named_spec(value, what)
    if named is None:
        raise ConfigurationError(
            f"{what} must be a number, a declearn Scheduler or [scheduler_name, config], "
            f"got {value!r}"
        )
    name, config = named
    known = declearn_schedulers()
    if name not in known:
        raise ConfigurationError(
            f"unknown {what} scheduler {name!r}; known schedulers: {', '.join(sorted(known))}"
        )
    try:
        return Scheduler.from_specs(name, config)
    except (TypeError, ValueError, KeyError) as exc:
        raise ConfigurationError(
            f"invalid config {config!r} for {what} scheduler {name!r}: {exc}; "
            f"its parameters are {_signature(known[name])}"
        ) from exc


def build_modules(specs: Iterable[PluginSpec] | None) -> list[OptiModule[Any]]:
    """Build declearn OptiModules from a list of specs, in order."""
    return cast(list[OptiModule[Any]], _build_plugins(OptiModule, specs, "modules"))


def build_regularizers(specs: Iterable[PluginSpec] | None) -> list[Regularizer]:
    """Build declearn Regularizers from a list of specs, in order."""
    return cast(list[Regularizer], _build_plugins(Regularizer, specs, "regularizers"))


def _build_plugins(base: type, specs: Iterable[Any] | None, what: str) -> list[Any]:
    if specs is None:
        return []
    if isinstance(specs, str | Mapping) or not isinstance(specs, Iterable):
        raise ConfigurationError(f"{what} must be a list, got {specs!r}: write {what}=[...]")
    return [_build_plugin(base, spec, what) for spec in specs]


def _registry(base: type) -> dict[str, type]:
    return dict(declearn_modules() if base is OptiModule else declearn_regularizers())


def _build_plugin(base: type, spec: Any, what: str) -> Any:
    other: type = Regularizer if base is OptiModule else OptiModule
    other_arg = "regularizers" if base is OptiModule else "modules"
    if isinstance(spec, base):
        return spec
    if isinstance(spec, other) or (isinstance(spec, type) and issubclass(spec, other)):
        label = spec.__name__ if isinstance(spec, type) else type(spec).__name__
        raise ConfigurationError(f"{label} cannot go in {what}: pass it in {other_arg}=[...]")
    if isinstance(spec, type) and issubclass(spec, base):
        return _instantiate(spec, {}, what)
    config: dict[str, Any]
    if isinstance(spec, str):
        name, config = spec, {}
    else:
        named = _split_named_spec(spec, what)
        if named is None:
            raise ConfigurationError(
                f"cannot build an entry of {what} from {spec!r}: give an instance, "
                "a name (str) or [name, config]"
            )
        name, config = named
    known = _registry(base)
    if name not in known:
        hint = ""
        if name in _registry(other):
            hint = f" ({name!r} is one of the {other_arg}: move it there)"
        raise ConfigurationError(
            f"unknown entry {name!r} in {what}{hint}; known names: {', '.join(sorted(known))}"
        )
    return _instantiate(known[name], config, what)


def _instantiate(cls: Any, config: dict[str, Any], what: str) -> Any:
    try:
        return cls.from_config(config)
    except (TypeError, ValueError, KeyError) as exc:
        raise ConfigurationError(
            f"invalid config {config!r} for {cls.__name__} in {what}: {exc}; "
            f"its parameters are {_signature(cls)}"
        ) from exc


def _signature(cls: type) -> str:
    return str(inspect.signature(cls))


def _constructor_value(plugin: Any, name: str) -> tuple[bool, Any]:
    """Find the value a constructor parameter was given, on the plug-in or a wrapped sub-module."""
    if hasattr(plugin, name):
        return True, getattr(plugin, name)
    for attr in vars(plugin).values():
        if isinstance(attr, OptiModule) and hasattr(attr, name):
            return True, getattr(attr, name)
    return False, None


def describe_plugin(plugin: OptiModule[Any] | Regularizer) -> list[Any]:
    """Return `[name, config]` for a plug-in, completing what its `get_config` leaves out.

    declearn 2.9's adaptive and momentum modules omit `round_reset` from `get_config`; it is
    recovered from the instance so that a spec rebuilds the same module.
    """
    config = dict(plugin.get_config())
    params = inspect.signature(type(plugin)).parameters
    for name, param in params.items():
        if name in config or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        found, value = _constructor_value(plugin, name)
        if found:
            config[name] = value
    return [plugin.name, to_jsonable(config, f"config of {type(plugin).__name__}")]


def describe_rate(rate: float | Scheduler) -> float | list[Any]:
    """Return a rate as a number, or a scheduler as `[name, config]`."""
    if isinstance(rate, Scheduler):
        return [rate.name, to_jsonable(rate.get_config(), f"config of {type(rate).__name__}")]
    return float(rate)


def to_jsonable(value: Any, what: str) -> Any:
    """Convert tuples to lists and numpy scalars to Python numbers, refusing anything else."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, list | tuple):
        return [to_jsonable(item, what) for item in value]
    if isinstance(value, Mapping):
        if not all(isinstance(key, str) for key in value):
            raise ConfigurationError(f"{what} has non-string keys: {list(value)!r}")
        return {key: to_jsonable(item, what) for key, item in value.items()}
    raise ConfigurationError(
        f"{what} holds a {type(value).__name__} ({value!r}) that cannot be written as JSON"
    )
