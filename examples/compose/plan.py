"""The compose federation's training plan: a small MLP, Adam + Scaffold on every node.

Each node container generates and registers a synthetic CSV tagged #demo (x0..x7, y).
"""

import pandas as pd
import torch

from common.data import DataManager
from common.optimizers.declearn import AdamModule, ScaffoldClientModule
from common.optimizers.optimizer import Optimizer
from common.training_plans import TorchTrainingPlan


class ComposeMLP(TorchTrainingPlan):
    """8 features -> 16 hidden units -> 1 logit, binary cross-entropy."""

    def init_dependencies(self):
        return [
            "import pandas as pd",
            "import torch",
            "from common.data import DataManager",
            "from common.optimizers.declearn import AdamModule, ScaffoldClientModule",
            "from common.optimizers.optimizer import Optimizer",
        ]

    def init_model(self):
        return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))

    def init_optimizer(self):
        return Optimizer(lr=0.01, modules=[ScaffoldClientModule(), AdamModule()])

    def training_data(self):
        df = pd.read_csv(self.dataset_path)
        features = df.drop(columns="y").values.astype("float32")
        return DataManager(dataset=features, target=df["y"].values, shuffle=True)

    def training_step(self, data, target):
        logits = self.model()(data).squeeze(1)
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, target.float())
