"""Training plans for the algorithm tests: one regression problem, one plan per node optimizer.

The torch plans train the same float64 linear model (x0..x3 -> y) with full-batch
`0.5 * mean squared error`, so that tests/reference_fl.py can replay their arithmetic to
rounding. Hyperparameters are class attributes: they travel to the nodes with the class
bodies, and the tests read the same attributes for their references. Only the class bodies
and `init_dependencies()` travel, so nothing else from this module is used in them.
"""

import pandas as pd
import torch

from common.data import DataManager
from common.optimizers.declearn import (
    AdaGradModule,
    AdamModule,
    FedProxRegularizer,
    ScaffoldClientModule,
)
from common.optimizers.optimizer import Optimizer
from common.training_plans import FedSGDRegressor, TorchTrainingPlan


class SGDRegressionPlan(TorchTrainingPlan):
    """Node optimizer of FedAvg, FedAdagrad, FedAdam and FedYogi: plain SGD."""

    LR = 0.1
    INITIAL_WEIGHT = (0.5, -0.5, 0.25, 0.0)
    INITIAL_BIAS = 0.1

    def init_dependencies(self):
        return [
            "import pandas as pd",
            "import torch",
            "from common.data import DataManager",
            "from common.optimizers.optimizer import Optimizer",
        ]

    def init_model(self):
        model = torch.nn.Linear(len(self.INITIAL_WEIGHT), 1).double()
        with torch.no_grad():
            model.weight.copy_(torch.tensor([self.INITIAL_WEIGHT], dtype=torch.float64))
            model.bias.fill_(self.INITIAL_BIAS)
        return model

    def init_optimizer(self):
        return Optimizer(lr=self.LR)

    def training_data(self):
        df = pd.read_csv(self.dataset_path)
        return DataManager(dataset=df.drop(columns="y").values, target=df["y"].values)

    def training_step(self, data, target):
        # DataManager batches arrive as float32 tensors; the model computes in float64.
        residual = self.model()(data.double()).squeeze(1) - target.double()
        return 0.5 * torch.mean(residual**2)


class AdaGradRegressionPlan(SGDRegressionPlan):
    """AdaAlter's node optimizer: AdaGrad, whose accumulator the node keeps between rounds."""

    LR = 0.05
    EPS = 1e-7

    def init_dependencies(self):
        return [
            *super().init_dependencies(),
            "from common.optimizers.declearn import AdaGradModule",
        ]

    def init_optimizer(self):
        return Optimizer(lr=self.LR, modules=[AdaGradModule(eps=self.EPS)])


class FedProxRegressionPlan(SGDRegressionPlan):
    """FedProx's node optimizer: SGD with a proximal term to the round's global model."""

    #: Large enough that the proximal term changes the result well beyond rounding.
    MU = 0.5

    def init_dependencies(self):
        return [
            *super().init_dependencies(),
            "from common.optimizers.declearn import FedProxRegularizer",
        ]

    def init_optimizer(self):
        return Optimizer(lr=self.LR, regularizers=[FedProxRegularizer(alpha=self.MU)])


class ScaffoldRegressionPlan(SGDRegressionPlan):
    """Scaffold's node optimizer: SGD corrected by the client control variate."""

    def init_dependencies(self):
        return [
            *super().init_dependencies(),
            "from common.optimizers.declearn import ScaffoldClientModule",
        ]

    def init_optimizer(self):
        return Optimizer(lr=self.LR, modules=[ScaffoldClientModule()])


class ScaffoldAdamRegressionPlan(SGDRegressionPlan):
    """Scaffold's correction followed by Adam, whose moments the node keeps between rounds."""

    LR = 0.05

    def init_dependencies(self):
        return [
            *super().init_dependencies(),
            "from common.optimizers.declearn import AdamModule, ScaffoldClientModule",
        ]

    def init_optimizer(self):
        return Optimizer(lr=self.LR, modules=[ScaffoldClientModule(), AdamModule()])


class NativeSGDRegressionPlan(SGDRegressionPlan):
    """The same model trained by a native torch.optim.SGD (exchanges no aux vars)."""

    def init_optimizer(self):
        return torch.optim.SGD(self.model().parameters(), lr=self.LR)


class NativeAdamRegressionPlan(SGDRegressionPlan):
    """The same model trained by torch.optim.Adam, whose state the node keeps between rounds."""

    LR = 0.05
    BETAS = (0.9, 0.99)
    EPS = 1e-7

    def init_optimizer(self):
        return torch.optim.Adam(
            self.model().parameters(), lr=self.LR, betas=self.BETAS, eps=self.EPS
        )


class SGDLinearRegressorPlan(FedSGDRegressor):
    """scikit-learn SGDRegressor (squared error, l2 penalty from model_args), plain SGD."""

    LR = 0.1

    def init_dependencies(self):
        return [
            "import pandas as pd",
            "from common.data import DataManager",
            "from common.optimizers.optimizer import Optimizer",
        ]

    def init_optimizer(self):
        return Optimizer(lr=self.LR)

    def training_data(self):
        df = pd.read_csv(self.dataset_path)
        return DataManager(dataset=df.drop(columns="y").values, target=df["y"].values)


class ScaffoldLinearRegressorPlan(SGDLinearRegressorPlan):
    """The SGDRegressor plan with Scaffold's client module."""

    def init_dependencies(self):
        return [
            *super().init_dependencies(),
            "from common.optimizers.declearn import ScaffoldClientModule",
        ]

    def init_optimizer(self):
        return Optimizer(lr=self.LR, modules=[ScaffoldClientModule()])
