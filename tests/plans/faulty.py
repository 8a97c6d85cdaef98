"""Training plans that misbehave on the node, and two well-behaved ones, for tests/test_node_e2e.py.

Only the class bodies and `init_dependencies()` travel to the nodes, so every number a plan
uses on the node is a class attribute.
"""

from common.optimizers.optimizer import Optimizer
from tests.plans.tabular import LogisticPlan


class AbortingPlan(LogisticPlan):
    """Kills its own process with SIGABRT, as a segfaulting native extension would."""

    def init_dependencies(self):
        return [*super().init_dependencies(), "import os"]

    def training_step(self, data, target):
        import os

        os.abort()


class HangingPlan(LogisticPlan):
    """Never returns from its first step (a deadlock, an endless loop)."""

    #: Far beyond any timeout the tests set; the node must stop it long before.
    SLEEP_SECONDS = 3600.0

    def init_dependencies(self):
        return [*super().init_dependencies(), "import time"]

    def training_step(self, data, target):
        import time

        time.sleep(self.SLEEP_SECONDS)
        return super().training_step(data, target)


class MemoryHogPlan(LogisticPlan):
    """Keeps allocating memory (and touching it) until the allocator fails."""

    #: One allocation: big enough to reach a limit of a few hundred MB in a few steps.
    CHUNK_BYTES = 32 * 1024 * 1024
    #: Safety stop for the test machine if the node's limit were not enforced: the plan then
    #: trains normally and the test expecting an error reply fails instead of the box swapping.
    SAFETY_CAP_BYTES = 4 * 1024**3

    def init_dependencies(self):
        return [*super().init_dependencies(), "import numpy as np"]

    def training_step(self, data, target):
        import numpy as np

        hoard = []
        while len(hoard) * self.CHUNK_BYTES < self.SAFETY_CAP_BYTES:
            hoard.append(np.ones(self.CHUNK_BYTES, dtype=np.uint8))
        return super().training_step(data, target)


class ExitingPlan(LogisticPlan):
    """Calls sys.exit(3) in the middle of training."""

    def init_dependencies(self):
        return [*super().init_dependencies(), "import sys"]

    def training_step(self, data, target):
        import sys

        sys.exit(3)


class ChattyPlan(LogisticPlan):
    """Trains normally, printing a line and logging a warning at each step."""

    PRINTED = "chatty plan: starting a step"
    WARNED = "chatty plan: learning rate 0.5 looks high"

    def init_dependencies(self):
        return [*super().init_dependencies(), "import logging"]

    def training_step(self, data, target):
        import logging

        print(self.PRINTED)
        logging.getLogger("plan").warning(self.WARNED)
        return super().training_step(data, target)


class WarnThenFailPlan(LogisticPlan):
    """Logs why it is about to fail, one warning per bad row, then fails: the researcher
    must see every warning, although the process ends right after writing them."""

    WARNED = "age missing in row"
    #: Enough short lines to fill the pipe to the node daemon (64 KiB): the process exits
    #: with hundreds of them still unread, and the reply must not overtake them.
    BAD_ROWS = 5000

    def init_dependencies(self):
        return [*super().init_dependencies(), "import logging"]

    def training_data(self):
        import logging

        for row in range(self.BAD_ROWS):
            logging.getLogger("plan").warning("%s %d", self.WARNED, row)
        raise ValueError("cannot train with missing ages")


class AdamLogisticPlan(LogisticPlan):
    """Logistic regression with Adam on the node: its moments and step count live across rounds."""

    LR = 0.05

    def init_dependencies(self):
        return [
            *super().init_dependencies(),
            "from common.optimizers.declearn import AdamModule",
        ]

    def init_optimizer(self):
        from common.optimizers.declearn import AdamModule

        return Optimizer(lr=self.LR, modules=[AdamModule()])
