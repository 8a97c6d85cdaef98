"""FedPer: a body shared by every node, a classification head each node keeps for itself.

The head is tagged local: it never leaves the node, which trains it from its own copy every
round. The body is federated (averaged) as usual. The nodes' datasets are CSV files with
feature columns and an integer class column `y` (make_data.py writes some).
"""

from collections import OrderedDict

import pandas as pd
import torch

from common.data import DataManager
from common.optimizers.optimizer import Optimizer
from common.training_plans import TorchTrainingPlan


class FedPerPlan(TorchTrainingPlan):
    """An MLP whose `body` is shared and whose `head` stays on each node."""

    #: Every parameter under the `head` module (head.weight, head.bias) stays on the node.
    local_parameters = ("head",)

    def init_dependencies(self):
        return [
            "from collections import OrderedDict",
            "import pandas as pd",
            "import torch",
            "from common.data import DataManager",
            "from common.optimizers.optimizer import Optimizer",
        ]

    def init_model(self, model_args):
        n_features = int(model_args.get("n_features", 8))
        hidden = int(model_args.get("hidden", 16))
        n_classes = int(model_args.get("n_classes", 4))
        body = torch.nn.Sequential(torch.nn.Linear(n_features, hidden), torch.nn.ReLU())
        return torch.nn.Sequential(OrderedDict(body=body, head=torch.nn.Linear(hidden, n_classes)))

    def init_optimizer(self):
        return Optimizer(lr=0.1)

    def training_data(self):
        df = pd.read_csv(self.dataset_path)
        features = df.drop(columns="y").values.astype("float32")
        return DataManager(dataset=features, target=df["y"].values.astype("int64"), shuffle=True)

    def training_step(self, data, target):
        return torch.nn.functional.cross_entropy(self.model()(data), target)
