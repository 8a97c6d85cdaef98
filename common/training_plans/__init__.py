"""Training plans: the classes researchers subclass, whose source runs on the nodes.

The framework plans are imported on first use (`from common.training_plans import
TorchTrainingPlan` works as usual), so importing `common.training_plans.base` or `.source`
does not pull torch or scikit-learn into a process that only aggregates (the researcher).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from common.training_plans.base import BaseTrainingPlan, LocalTrainingResult

if TYPE_CHECKING:
    from common.training_plans.sklearn_plans import FedSGDClassifier, FedSGDRegressor
    from common.training_plans.torch_plan import TorchTrainingPlan

__all__ = [
    "BaseTrainingPlan",
    "FedSGDClassifier",
    "FedSGDRegressor",
    "LocalTrainingResult",
    "TorchTrainingPlan",
]

_LAZY = {
    "FedSGDClassifier": "common.training_plans.sklearn_plans",
    "FedSGDRegressor": "common.training_plans.sklearn_plans",
    "TorchTrainingPlan": "common.training_plans.torch_plan",
}


def framework_plan_modules() -> list[str]:
    """The modules loaded on first use: a node's warm process imports them up front."""
    return sorted(set(_LAZY.values()))


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
