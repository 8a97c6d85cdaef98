"""scikit-learn training plans used by the end-to-end tests (their source travels to the nodes).

Only the class bodies and `init_dependencies()` travel, so the classes use nothing else
from this module.
"""

import pandas as pd

from common.data import DataManager
from common.optimizers.declearn import AdamModule
from common.optimizers.optimizer import Optimizer
from common.training_plans import FedSGDClassifier, FedSGDRegressor


class LogisticSGDPlan(FedSGDClassifier):
    """SGDClassifier configured by model_args (e.g. loss='log_loss'), plain SGD with lr=0.5."""

    def init_dependencies(self):
        return [
            "import pandas as pd",
            "from common.data import DataManager",
            "from common.optimizers.optimizer import Optimizer",
        ]

    def init_optimizer(self):
        return Optimizer(lr=0.5)

    def training_data(self):
        df = pd.read_csv(self.dataset_path)
        return DataManager(dataset=df.drop(columns="y").values, target=df["y"].values)


class LinearAdamPlan(FedSGDRegressor):
    """SGDRegressor configured by model_args, trained with Adam (whose state the node keeps)."""

    def init_dependencies(self):
        return [
            "import pandas as pd",
            "from common.data import DataManager",
            "from common.optimizers.declearn import AdamModule",
            "from common.optimizers.optimizer import Optimizer",
        ]

    def init_optimizer(self):
        return Optimizer(lr=0.1, modules=[AdamModule(beta_1=0.9, beta_2=0.99, eps=1e-7)])

    def training_data(self):
        df = pd.read_csv(self.dataset_path)
        return DataManager(dataset=df.drop(columns="y").values, target=df["y"].values)
