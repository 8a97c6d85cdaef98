"""Training plans that try to escape their task, for tests/test_node_containment.py.

Only the class bodies and `init_dependencies()` travel to the nodes; what a test varies
(a path, a port, a process name) reaches the plan through the experiment's `model_args`.
"""

import ctypes
import os
import signal
import socket
import tempfile
import time
from pathlib import Path

from tests.plans.tabular import LogisticPlan


class SegfaultPlan(LogisticPlan):
    """Dereferences a null pointer, as a crashing native extension would."""

    def init_dependencies(self):
        return [*super().init_dependencies(), "import ctypes"]

    def training_step(self, data, target):
        ctypes.string_at(0)


class DetachedChildrenPlan(LogisticPlan):
    """Starts detached processes (double fork + setsid) named `model_args["name"]`, checks
    they run, then trains normally, or hangs when `model_args["hang"]`."""

    #: Detached processes started: enough to show none survives, few enough for a CI box.
    COUNT = 50
    SLEEP_SECONDS = 3600.0

    def init_dependencies(self):
        return [
            *super().init_dependencies(),
            "import ctypes",
            "import os",
            "import time",
            "from pathlib import Path",
        ]

    def _named(self, name):
        found = 0
        for comm in Path("/proc").glob("[0-9]*/comm"):
            try:
                found += comm.read_text().strip() == name
            except OSError:
                pass
        return found

    def _detach(self, name):
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                ctypes.CDLL(None).prctl(15, name.encode(), 0, 0, 0)  # PR_SET_NAME
                time.sleep(self.SLEEP_SECONDS)
            os._exit(0)

    def training_data(self):
        name = self.model_args()["name"]
        for _ in range(self.COUNT):
            self._detach(name)
        deadline = time.monotonic() + 30
        while self._named(name) < self.COUNT:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {self._named(name)} detached processes started")
            time.sleep(0.05)
        if self.model_args().get("hang"):
            time.sleep(self.SLEEP_SECONDS)
        return super().training_data()


class OutsideWriterPlan(LogisticPlan):
    """Writes a temporary file (inside its box: must work), then `model_args["target"]`."""

    def init_dependencies(self):
        return [*super().init_dependencies(), "import tempfile", "from pathlib import Path"]

    def training_data(self):
        with tempfile.NamedTemporaryFile() as handle:
            handle.write(b"scratch space works")
        Path(self.model_args()["target"]).write_text("escaped the box")
        return super().training_data()


class ConnectingPlan(LogisticPlan):
    """Opens a TCP connection to 127.0.0.1:`model_args["port"]`."""

    def init_dependencies(self):
        return [*super().init_dependencies(), "import socket"]

    def training_data(self):
        with socket.create_connection(("127.0.0.1", self.model_args()["port"]), timeout=5):
            pass
        return super().training_data()


class SelfKillingPlan(LogisticPlan):
    """SIGKILLs its own process: neither the node nor the OOM killer did it."""

    def init_dependencies(self):
        return [*super().init_dependencies(), "import os", "import signal"]

    def training_step(self, data, target):
        os.kill(os.getpid(), signal.SIGKILL)
