"""Training plans used by the end-to-end tests (their source travels to the test nodes)."""

import numpy as np
import pandas as pd
import torch

from common.data import DataManager
from common.optimizers.optimizer import Optimizer
from common.training_plans import TorchTrainingPlan


class LogisticPlan(TorchTrainingPlan):
    """Logistic regression on x0..x3 -> y, plain SGD, full batch."""

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
        return Optimizer(lr=0.5)

    def training_data(self):
        df = pd.read_csv(self.dataset_path)
        return DataManager(
            dataset=df.drop(columns="y").values.astype("float32"), target=df["y"].values
        )

    def training_step(self, data, target):
        logits = self.model()(data).squeeze(1)
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, target.float())


class RaisingPlan(LogisticPlan):
    """Fails on the node while loading its data."""

    def training_data(self):
        raise ValueError("column 'age' has unparseable values")


def make_logistic_data(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype("float32")
    w = np.array([2.0, -1.0, 0.5, 0.0])
    y = (x @ w + 0.1 * rng.normal(size=n) > 0).astype(int)
    return x, y


class SlowPlan(LogisticPlan):
    """Takes a few seconds per step, so a test can act while nodes train."""

    def init_dependencies(self):
        return [*super().init_dependencies(), "import time"]

    def training_step(self, data, target):
        import time

        time.sleep(4.0)
        return super().training_step(data, target)


class ScaffoldLogisticPlan(LogisticPlan):
    """Logistic regression with Scaffold client correction on the node."""

    def init_dependencies(self):
        return [
            *super().init_dependencies(),
            "from common.optimizers.declearn import ScaffoldClientModule",
        ]

    def init_optimizer(self):
        from common.optimizers.declearn import ScaffoldClientModule

        return Optimizer(lr=0.5, modules=[ScaffoldClientModule()])


class HugePagesPlan(LogisticPlan):
    """Prints whether a 16 MB torch tensor of its task process may use transparent huge pages."""

    HUGE = "16 MB tensor THPeligible:"

    def init_model(self):
        block = torch.empty(4 << 20)  # float32: 16 MB, above torch's 2 MB huge-page threshold
        address = block.data_ptr()
        eligible = "no mapping"
        with open("/proc/self/smaps") as smaps:
            inside = False
            for line in smaps:
                head = line.split()[0]
                if "-" in head and not head.endswith(":"):
                    start, end = (int(part, 16) for part in head.split("-"))
                    inside = start <= address < end
                elif inside and head == "THPeligible:":
                    eligible = line.split()[1]
                    break
        print(f"{self.HUGE} {eligible}")
        return super().init_model()


class GlobalReleasedPlan(LogisticPlan):
    """Prints, while it trains, whether its task still has the downloaded global model
    apart from its own, and whether its model lives in the task's `training.bin` mapping."""

    GLOBAL = "global model while training:"

    def init_dependencies(self):
        return [*super().init_dependencies(), "import os"]

    def training_step(self, data, target):
        import os

        scratch = os.path.dirname(os.environ["TMPDIR"])  # the task's box, which holds it
        with open("/proc/self/maps") as maps:
            lines = maps.read().splitlines()
        mapped = sum("global.bin" in line for line in lines)
        address = self.model().weight.data_ptr()
        in_file = False
        for line in lines:
            if line.endswith("training.bin"):
                low, high = (int(part, 16) for part in line.split()[0].split("-"))
                in_file = in_file or low <= address < high
        exists = os.path.exists(os.path.join(scratch, "global.bin"))
        print(f"{self.GLOBAL} file {exists}, mappings {mapped}, model in file {in_file}")
        return super().training_step(data, target)


class GlobalCopiedInPlan(GlobalReleasedPlan):
    """Sets its parameters its own way: the node copies the global model in, then frees it."""

    def set_parameters(self, params):
        super().set_parameters(params)


class SwappingPlan(LogisticPlan):
    """Replaces its weight tensor while training (its optimizer keeps the old one), with one
    holding SWAPPED_VALUE: the reply must carry that tensor, not the one the task mapped."""

    SWAPPED_VALUE = 0.5

    def training_step(self, data, target):
        model = self.model()
        if not getattr(self, "_swapped", False):
            model.weight = torch.nn.Parameter(torch.full_like(model.weight, self.SWAPPED_VALUE))
            self._swapped = True
        return super().training_step(data, target)


class ThreadsPlan(LogisticPlan):
    """Prints how many threads torch and numpy's BLAS may use in its task process, and how
    many threads that process runs (idle BLAS pools spin: they must not be started)."""

    THREADS = "task threads:"

    def init_dependencies(self):
        return [
            *super().init_dependencies(),
            "import os",
            "from threadpoolctl import threadpool_info",
        ]

    def init_model(self):
        import os

        from threadpoolctl import threadpool_info

        blas = sorted({pool["num_threads"] for pool in threadpool_info()})
        running = len(os.listdir("/proc/self/task"))
        print(f"{self.THREADS} torch {torch.get_num_threads()}, blas {blas}, running {running}")
        return super().init_model()


class NativeSgdPlan(LogisticPlan):
    """Trains with a native torch.optim.SGD and prints which lazy imports it found done."""

    PRELOADED = "torch.optim preloaded:"

    def init_dependencies(self):
        return [*super().init_dependencies(), "import sys"]

    def init_optimizer(self):
        import sys

        # Building a torch.optim optimizer imports torch._dynamo unless the task process
        # inherited it from its warm parent.
        print(f"{self.PRELOADED} {'torch._dynamo' in sys.modules}")
        return torch.optim.SGD(self.model().parameters(), lr=0.5)
