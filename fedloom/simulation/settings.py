"""`Simulation`: the backend that runs an experiment's rounds on virtual nodes on Ray.

`Experiment(..., backend=Simulation(nodes=100, split="dirichlet:0.3", data="data.csv",
target="label"))` runs the same round engine, plans, optimizers, aggregators, strategies,
checkpoints and progress display as a real federation; only the exchange differs
(fedloom/simulation/exchange.py). Per-round client sampling is the strategy's job
(`SamplingStrategy(fraction=...)` or `(count=...)`), as in a real federation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from common.data_split import parse_split
from common.errors import ConfigurationError

if TYPE_CHECKING:
    from fedloom.simulation.exchange import SimulationExchange
    from fedloom.simulation.pool import ActorPool
    from fedloom.simulation.ray_runtime import RayRuntime
    from researcher.rounds.round import RoundSetup

__all__ = ["DEFAULT_OBJECT_STORE_BYTES", "Simulation"]

#: Object store of an embedded Ray: tasks pass file paths, not arrays, so it holds little;
#: Ray's default (30% of RAM) would reserve gigabytes of shared memory for nothing.
DEFAULT_OBJECT_STORE_BYTES = 256 * 1024 * 1024


@dataclass
class Simulation:
    """N virtual nodes, each holding one shard of `data`, trained by a pool of Ray actors.

    - `split`: `iid`, `label-skew:K` or `dirichlet:ALPHA` (common/data_split.py), seeded by
      `seed`; `target` names the class column (CSV) or array (NPZ) the split needs.
    - `pool`: Ray actors training at once (default: the CPUs Ray has / `cpus_per_task`);
      memory grows with the pool, not with `nodes`.
    - `cpus_per_task`, `gpus_per_task`, `memory_per_task` (bytes): resources one virtual
      node's task reserves on the cluster.
    - `ray_address`: join this running cluster (`ray start --head`); None starts an embedded
      Ray (or reuses the one this process already started).
    """

    nodes: int
    data: Path | str
    split: str = "iid"
    target: str | None = None
    seed: int = 0
    pool: int | None = None
    cpus_per_task: float = 1.0
    gpus_per_task: float = 0.0
    memory_per_task: int | None = None
    ray_address: str | None = None
    object_store_memory: int = DEFAULT_OBJECT_STORE_BYTES

    def __post_init__(self) -> None:
        self._exchanges: dict[Path, SimulationExchange] = {}
        self._engine: tuple[RayRuntime, ActorPool] | None = None
        if not isinstance(self.nodes, int) or isinstance(self.nodes, bool) or self.nodes < 1:
            raise ConfigurationError(f"nodes must be a whole number >= 1, got {self.nodes!r}")
        self.data = Path(self.data)
        if not self.data.is_file():
            raise ConfigurationError(
                f"simulation data {self.data} does not exist or is not a file: give one CSV "
                "(with a header line) or NPZ file holding every sample"
            )
        parse_split(self.split)  # a bad split fails here, naming the accepted forms
        if self.pool is not None and (not isinstance(self.pool, int) or self.pool < 1):
            raise ConfigurationError(
                f"pool must be a whole number of actors >= 1, got {self.pool!r}"
            )
        for name in ("cpus_per_task", "gpus_per_task"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ConfigurationError(f"{name} must be a number >= 0, got {value!r}")
        if self.cpus_per_task == 0 and self.gpus_per_task == 0:
            raise ConfigurationError(
                "cpus_per_task and gpus_per_task are both 0: a task must reserve some resource, "
                "or Ray would run the whole pool on one core"
            )
        if self.memory_per_task is not None and self.memory_per_task < 1:
            raise ConfigurationError(
                f"memory_per_task is in bytes and must be positive, got {self.memory_per_task!r}"
            )

    def open_exchange(self, setup: RoundSetup, folder: Path) -> SimulationExchange:
        """The exchange for an experiment writing into `folder` (reused by later runs)."""
        if setup.secagg is not None:
            raise ConfigurationError(
                "secure aggregation is refused in simulation: every virtual node runs in this "
                "researcher's own cluster, so masking would hide nothing from anyone; switch "
                "it off (secagg=False) to simulate, and keep it for the real federation"
            )
        key = Path(folder).resolve()
        exchange = self._exchanges.get(key)
        if exchange is None:
            from fedloom.simulation.exchange import SimulationExchange

            _, pool = self._start_engine()
            exchange = SimulationExchange.start(self, setup, key, pool)
            self._exchanges[key] = exchange
        return exchange

    def _start_engine(self) -> tuple[RayRuntime, ActorPool]:
        """Ray and the actor pool, started once and shared by every experiment run here
        (a second pool would wait forever for the CPUs the first one holds)."""
        if self._engine is None:
            from fedloom.simulation.pool import ActorPool, task_resources
            from fedloom.simulation.ray_runtime import RayRuntime

            runtime = RayRuntime(self.ray_address, self.object_store_memory)
            try:
                size = self.pool or _default_pool_size(runtime, self.cpus_per_task)
                resources = task_resources(
                    self.cpus_per_task, self.gpus_per_task, self.memory_per_task
                )
                self._engine = runtime, ActorPool(runtime.ray, size, resources)
            except BaseException:
                runtime.close()
                raise
        return self._engine

    def close(self) -> None:
        """Stop the actors, and the embedded Ray if this simulation started it."""
        self._exchanges.clear()
        if self._engine is not None:
            runtime, pool = self._engine
            self._engine = None
            pool.close()
            runtime.close()

    def __enter__(self) -> Simulation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _default_pool_size(runtime: RayRuntime, cpus_per_task: float) -> int:
    """As many actors as the cluster's CPUs hold tasks (one for GPU-only tasks)."""
    if cpus_per_task <= 0:
        return 1
    return max(1, int(runtime.cpus() // cpus_per_task))
