"""Import a training plan class from a Python file (TOML experiments, saved checkpoints)."""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
from pathlib import Path

from common.errors import ConfigurationError
from common.training_plans.base import BaseTrainingPlan

__all__ = ["load_plan_class"]


def load_plan_class(path: Path, class_name: str) -> type[BaseTrainingPlan]:
    """Import `path` as a module and return its training plan class `class_name`.

    The module is registered in `sys.modules` so the class's source can be read back and
    sent to the nodes exactly as the file defines it.
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise ConfigurationError(f"training plan file {path} does not exist")
    digest = hashlib.sha256(str(path).encode("utf-8")).hexdigest()[:12]
    module_name = f"fedloom_user_plan_{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ConfigurationError(f"cannot import {path} as a Python module: is it a .py file?")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the researcher's own file: report what broke and where
        del sys.modules[module_name]
        raise ConfigurationError(
            f"importing training plan file {path} failed: {type(exc).__name__}: {exc}"
        ) from exc
    plans = sorted(
        name
        for name, value in vars(module).items()
        if inspect.isclass(value)
        and issubclass(value, BaseTrainingPlan)
        and value.__module__ == module_name
    )
    plan_class = getattr(module, class_name, None)
    if plan_class is None:
        raise ConfigurationError(
            f"{path} defines no class {class_name!r}; training plan classes found there: {plans or 'none'}"
        )
    if not (inspect.isclass(plan_class) and issubclass(plan_class, BaseTrainingPlan)):
        raise ConfigurationError(
            f"{class_name!r} in {path} is not a training plan: subclass TorchTrainingPlan, "
            "FedSGDClassifier or FedSGDRegressor"
        )
    return plan_class
