"""The benchmark's training plan: a square linear model of `width`^2 parameters, one step per round."""

import torch

from common.data import DataManager
from common.optimizers.optimizer import Optimizer
from common.training_plans import TorchTrainingPlan


class SquareLinear(TorchTrainingPlan):
    def init_dependencies(self):
        return [
            "import torch",
            "from common.data import DataManager",
            "from common.optimizers.optimizer import Optimizer",
        ]

    def init_model(self, model_args):
        return torch.nn.Linear(model_args["width"], model_args["width"], bias=False)

    def init_optimizer(self):
        return Optimizer(lr=0.01)

    def training_data(self):
        width = self.model_args()["width"]
        return DataManager(dataset=torch.ones(2, width).numpy(), target=torch.zeros(2).numpy())

    def training_step(self, data, target):
        return self.model()(data).pow(2).mean()
