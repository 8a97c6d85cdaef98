"""A logistic regression trained with Adam + Scaffold on the nodes (see experiment.toml).

The nodes' datasets are CSV files with feature columns and a 0/1 target column `y`.
Full-batch training with a fixed `random_seed` makes every round deterministic.
"""

import pandas as pd
import torch

from common.data import DataManager
from common.optimizers.declearn import AdamModule, ScaffoldClientModule
from common.optimizers.optimizer import Optimizer
from common.training_plans import TorchTrainingPlan


class LogisticScaffoldPlan(TorchTrainingPlan):
    """Logistic regression on every column but `y`; `model_args["n_features"]` inputs."""

    def init_dependencies(self):
        return [
            "import pandas as pd",
            "import torch",
            "from common.data import DataManager",
            "from common.optimizers.declearn import AdamModule, ScaffoldClientModule",
            "from common.optimizers.optimizer import Optimizer",
        ]

    def init_model(self, model_args):
        return torch.nn.Linear(int(model_args.get("n_features", 4)), 1)

    def init_optimizer(self):
        return Optimizer(lr=0.05, modules=[ScaffoldClientModule(), AdamModule()])

    def training_data(self):
        df = pd.read_csv(self.dataset_path)
        features = df.drop(columns="y").values.astype("float32")
        return DataManager(dataset=features, target=df["y"].values)

    def training_step(self, data, target):
        logits = self.model()(data).squeeze(1)
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, target.float())
