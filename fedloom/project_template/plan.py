"""The training plan of __PROJECT__: a small neural network for a binary target in a CSV file.

The nodes run this class on their own data; its source is what their operators review and
approve. Every column but the target is a feature. Adapt `init_model`, `training_data` and
`training_step` to your data; list every import the node needs in `init_dependencies`.
"""

import pandas as pd
import torch

from common.data import DataManager
from common.optimizers.declearn import AdamModule
from common.optimizers.optimizer import Optimizer
from common.training_plans import TorchTrainingPlan


class ProjectPlan(TorchTrainingPlan):
    """`n_features` inputs -> `hidden` units -> 1 logit, binary cross-entropy."""

    def init_dependencies(self):
        return [
            "import pandas as pd",
            "import torch",
            "from common.data import DataManager",
            "from common.optimizers.declearn import AdamModule",
            "from common.optimizers.optimizer import Optimizer",
        ]

    def init_model(self, model_args):
        n_features = int(model_args["n_features"])
        hidden = int(model_args.get("hidden", 16))
        return torch.nn.Sequential(
            torch.nn.Linear(n_features, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1)
        )

    def init_optimizer(self):
        # The node-side optimizer: Adam through declearn (see the optimizers tutorial).
        return Optimizer(lr=0.01, modules=[AdamModule()])

    def training_data(self):
        target = self.model_args().get("target", "y")
        df = pd.read_csv(self.dataset_path)
        return DataManager(
            dataset=df.drop(columns=target).values.astype("float32"),
            target=df[target].values,
            shuffle=True,
        )

    def training_step(self, data, target):
        logits = self.model()(data).squeeze(1)
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, target.float())
