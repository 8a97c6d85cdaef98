"""The declearn optimizer plug-ins fedloom supports, re-exported for training plans.

Import them from here (`from common.optimizers.declearn import AdamModule`) rather than from
`declearn.optimizer` directly: everything listed here is covered by fedloom's tests with both
torch and numpy models, and travels through fedloom's aux-var and state codecs.
"""

from __future__ import annotations

from typing import Any

from declearn.optimizer.modules import (
    AdaGradModule,
    AdamModule,
    AuxVar,
    EWMAModule,
    GaussianNoiseModule,
    L2Clipping,
    L2GlobalClipping,
    MomentumModule,
    OptiModule,
    RMSPropModule,
    ScaffoldAuxVar,
    ScaffoldClientModule,
    ScaffoldServerModule,
    YogiModule,
    YogiMomentumModule,
)
from declearn.optimizer.regularizers import (
    FedProxRegularizer,
    LassoRegularizer,
    Regularizer,
    RidgeRegularizer,
)
from declearn.optimizer.schedulers import Scheduler

__all__ = [
    "AdaGradModule",
    "AdamModule",
    "AuxVar",
    "EWMAModule",
    "FedProxRegularizer",
    "GaussianNoiseModule",
    "L2Clipping",
    "L2GlobalClipping",
    "LassoRegularizer",
    "MomentumModule",
    "OptiModule",
    "RMSPropModule",
    "Regularizer",
    "RidgeRegularizer",
    "ScaffoldAuxVar",
    "ScaffoldClientModule",
    "ScaffoldServerModule",
    "Scheduler",
    "YogiModule",
    "YogiMomentumModule",
    "list_optim_modules",
    "list_optim_regularizers",
]

_SUPPORTED_MODULES: tuple[type[OptiModule[Any]], ...] = (
    AdaGradModule,
    AdamModule,
    EWMAModule,
    GaussianNoiseModule,
    L2Clipping,
    L2GlobalClipping,
    MomentumModule,
    RMSPropModule,
    ScaffoldClientModule,
    ScaffoldServerModule,
    YogiModule,
    YogiMomentumModule,
)

_SUPPORTED_REGULARIZERS: tuple[type[Regularizer], ...] = (
    FedProxRegularizer,
    LassoRegularizer,
    RidgeRegularizer,
)


def list_optim_modules() -> dict[str, type[OptiModule[Any]]]:
    """Map the name of each supported declearn OptiModule ('adam', ...) to its class."""
    return {cls.name: cls for cls in _SUPPORTED_MODULES}


def list_optim_regularizers() -> dict[str, type[Regularizer]]:
    """Map the name of each supported declearn Regularizer ('ridge', ...) to its class."""
    return {cls.name: cls for cls in _SUPPORTED_REGULARIZERS}
