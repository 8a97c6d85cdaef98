"""A second version of `tests.plans.tabular.LogisticPlan`: same class name, changed source.

The console test shows the operator its diff against the approved first version.
"""

import pandas as pd
import torch

from common.data import DataManager
from common.optimizers.optimizer import Optimizer
from common.training_plans import TorchTrainingPlan


class LogisticPlan(TorchTrainingPlan):
    """Logistic regression on x0..x3 -> y, plain SGD with a smaller step, full batch."""

    def init_dependencies(self):
        return [
            "import pandas as pd",
            "import torch",
            "from common.data import DataManager",
            "from common.optimizers.optimizer import Optimizer",
        ]

    def init_model(self):
        torch.manual_seed(0)
        return torch.nn.Linear(4, 1)

    def init_optimizer(self):
        return Optimizer(lr=0.2)

    def training_data(self):
        df = pd.read_csv(self.dataset_path)
        return DataManager(
            dataset=df.drop(columns="y").values.astype("float32"), target=df["y"].values
        )

    def training_step(self, data, target):
        logits = self.model()(data).squeeze(1)
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, target.float())
