"""Training plans: the classes researchers subclass, whose source runs on the nodes."""

from common.training_plans.base import BaseTrainingPlan, LocalTrainingResult
from common.training_plans.sklearn_plans import FedSGDClassifier, FedSGDRegressor
from common.training_plans.torch_plan import TorchTrainingPlan

__all__ = [
    "BaseTrainingPlan",
    "FedSGDClassifier",
    "FedSGDRegressor",
    "LocalTrainingResult",
    "TorchTrainingPlan",
]
