"""Training plans of the fault suite (their source travels to the test nodes)."""

import re

import numpy as np
import torch

from tests.plans.tabular import LogisticPlan


class WidePlan(LogisticPlan):
    """Logistic regression whose weight row is WIDE long; only the first 4 columns are used."""

    #: 4 MB of float32 parameters: an upload takes seconds through a throttled link and
    #: can be cut in the middle.
    WIDE = 1 << 20

    def init_model(self):
        torch.manual_seed(0)
        return torch.nn.Linear(self.WIDE, 1)

    def training_step(self, data, target):
        linear = self.model()
        logits = (data @ linear.weight[:, :4].T + linear.bias).squeeze(1)
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, target.float())


class CorruptingPlan(LogisticPlan):
    """Sends NaN parameters from a dataset file named `nan...`, a wrong shape from `shape...`."""

    def init_dependencies(self):
        return [*super().init_dependencies(), "import re", "import numpy as np"]

    def get_parameters(self):
        params = super().get_parameters()
        name = re.sub(r".*/", "", str(self.dataset_path or ""))
        if name.startswith("nan"):
            params = {k: np.full_like(v, np.nan) for k, v in params.items()}
        elif name.startswith("shape"):
            params = {k: np.zeros((*v.shape, 2), v.dtype) for k, v in params.items()}
        return params
