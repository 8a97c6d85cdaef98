"""The demo's experiment: a small MLP trained with FedAvg on the nodes' synthetic CSVs.

Run by `fedloom demo` through `fedloom researcher run`; also a readable example script.
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


class DemoMLP(TorchTrainingPlan):
    """8 features -> 16 hidden units -> 1 logit, binary cross-entropy."""

    def init_dependencies(self) -> list[str]:
        return [
            "import pandas as pd",
            "import torch",
            "from common.data import DataManager",
            "from common.optimizers.optimizer import Optimizer",
        ]

    def init_model(self, model_args: object = None) -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))

    def init_optimizer(self, optimizer_args: object = None) -> Optimizer:
        return Optimizer(lr=0.1)

    def training_data(self) -> DataManager:
        df = pd.read_csv(self.dataset_path)
        return DataManager(
            dataset=df.drop(columns="y").values.astype("float32"),
            target=df["y"].values,
            shuffle=True,
        )

    def training_step(self, data: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = self.model()(data).squeeze(1)
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, target.float())


if __name__ == "__main__":
    exp = Experiment(
        tags=["#demo"],
        training_plan_class=DemoMLP,
        training_args={
            "epochs": 1,
            "batch_size": 32,
            "random_seed": 0,
            "test_ratio": 0.2,
            "test_on_local_updates": True,
        },
        round_limit=int(os.environ.get("FEDLOOM_DEMO_ROUNDS", "5")),
        aggregator=FedAverage(),
        node_selection_strategy=DefaultStrategy(
            min_nodes=int(os.environ.get("FEDLOOM_DEMO_NODES", "1"))
        ),
    )
    exp.run()
