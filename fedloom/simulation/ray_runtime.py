"""Importing, starting or joining Ray: the only module of the simulation that touches `ray`
at import time of its functions, never at import of the package (the core install has no Ray).
"""

from __future__ import annotations

import logging
from types import ModuleType
from typing import Any

from common.errors import ConfigurationError

__all__ = ["RayRuntime", "import_ray"]

log = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "fedloom[simulation]"'


def import_ray() -> ModuleType:
    """The `ray` module, or a ConfigurationError naming the extra that installs it."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigurationError(
            f"the simulation runs virtual nodes on Ray, which is not installed ({exc}): "
            f"{INSTALL_HINT}"
        ) from exc
    return ray


class RayRuntime:
    """A connection to Ray: an embedded local instance, or a running cluster at `address`.

    A Ray this process had already initialised is reused and left running on `close()`.
    """

    def __init__(self, address: str | None, object_store_memory: int) -> None:
        self.ray = import_ray()
        self._owned = False
        if self.ray.is_initialized():
            log.info("using the Ray instance this process already started")
            return
        options: dict[str, Any] = {
            "logging_level": logging.WARNING,
            "log_to_driver": False,  # the plan's log lines stay in Ray's worker logs
            "configure_logging": True,
        }
        if address is None:
            options.update(include_dashboard=False, object_store_memory=object_store_memory)
        try:
            self.ray.init(address=address, **options)
        except ConnectionError as exc:
            raise ConfigurationError(
                f"cannot join the Ray cluster at {address}: {exc}; start it with "
                "`ray start --head` and give its address (HOST:6379) to --ray-address"
            ) from exc
        self._owned = True
        resources = self.ray.cluster_resources()
        log.info(
            "Ray %s: %g CPU(s), %g GPU(s)",
            "cluster at " + address if address else "started locally",
            resources.get("CPU", 0),
            resources.get("GPU", 0),
        )

    @property
    def address(self) -> str:
        context = self.ray.get_runtime_context()
        return str(context.gcs_address)

    def cpus(self) -> float:
        return float(self.ray.cluster_resources().get("CPU", 1.0))

    def close(self) -> None:
        if self._owned and self.ray.is_initialized():
            self.ray.shutdown()
        self._owned = False
