"""The compose federation's experiment: logistic regression with FedAvg on the nodes' demo CSVs.

Run inside the researcher container by docker/entrypoint.sh
(`fedloom researcher run /experiment/experiment.py --out /results ...`). The three
node containers each generate and register a synthetic dataset tagged #demo.
Settings come from the environment so the compose file can change them:
FEDLOOM_ROUNDS (default 5) and FEDLOOM_MIN_NODES (default 3).
"""

import os

import pandas as pd
import torch

from common.data import DataManager
from common.optimizers.optimizer import Optimizer
from common.training_plans import TorchTrainingPlan
from researcher.aggregators import FedAverage
from researcher.federated_workflows import Experiment
from researcher.strategies.default_strategy import DefaultStrategy


class ComposeLogReg(TorchTrainingPlan):
    """8 features -> 1 logit, binary cross-entropy."""

    def init_dependencies(self):
        return [
            "import pandas as pd",
            "import torch",
            "from common.data import DataManager",
            "from common.optimizers.optimizer import Optimizer",
        ]

    def init_model(self):
        return torch.nn.Linear(8, 1)

    def init_optimizer(self):
        return Optimizer(lr=0.1)

    def training_data(self):
        df = pd.read_csv(self.dataset_path)
        features = df.drop(columns="y").values.astype("float32")
        return DataManager(dataset=features, target=df["y"].values, shuffle=True)

    def training_step(self, data, target):
        logits = self.model()(data).squeeze(1)
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, target.float())


if __name__ == "__main__":
    Experiment(
        tags=["#demo"],
        training_plan_class=ComposeLogReg,
        training_args={"epochs": 1, "batch_size": 32, "random_seed": 0},
        round_limit=int(os.environ.get("FEDLOOM_ROUNDS", "5")),
        aggregator=FedAverage(),
        node_selection_strategy=DefaultStrategy(
            min_nodes=int(os.environ.get("FEDLOOM_MIN_NODES", "3"))
        ),
    ).run()
