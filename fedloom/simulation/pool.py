"""A bounded pool of Ray actors: at most `size` virtual nodes' tasks run at once, each actor
training one task at a time; the others wait in a queue. Memory grows with the pool, not with
the number of virtual nodes."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from fedloom.simulation.actor import VirtualNodeActor

__all__ = ["ActorPool", "task_resources"]

log = logging.getLogger(__name__)

#: Seconds between checks of the round deadline while tasks run.
POLL_SECONDS = 0.5


def task_resources(cpus: float, gpus: float, memory: int | None) -> dict[str, Any]:
    """Ray actor options reserving what one virtual node's task may use."""
    options: dict[str, Any] = {"num_cpus": cpus, "num_gpus": gpus}
    if memory is not None:
        options["memory"] = memory
    return options


class ActorPool:
    """Runs tasks (by key and task file path) on up to `size` actors, reused across rounds."""

    def __init__(self, ray: Any, size: int, resources: dict[str, Any]) -> None:
        self._ray = ray
        self.size = size
        self._actor_class = ray.remote(VirtualNodeActor).options(**resources)
        self._idle: list[Any] = []

    def run(
        self,
        jobs: Sequence[tuple[str, str]],
        deadline: float,
        on_done: Callable[[str], None],
    ) -> dict[str, str]:
        """Run every `(key, task path)`, calling `on_done(key)` in this thread as each ends.

        Returns, for the jobs that did not end by `deadline` (time.monotonic()) or whose
        actor died, the reason. An actor still busy at the deadline is killed.
        """
        ray = self._ray
        waiting = deque(jobs)
        running: dict[Any, tuple[str, Any]] = {}
        failures: dict[str, str] = {}
        while waiting or running:
            while waiting and len(running) < self.size:
                key, path = waiting.popleft()
                actor = self._idle.pop() if self._idle else self._actor_class.remote()
                running[actor.run.remote(path)] = (key, actor)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                for key, actor in running.values():
                    ray.kill(actor)
                    failures[key] = (
                        "still working when the round deadline passed "
                        "(training_args['round_timeout'])"
                    )
                for key, _ in waiting:
                    failures[key] = (
                        "not started before the round deadline passed: raise "
                        "training_args['round_timeout'] or the pool size"
                    )
                break
            ready, _ = ray.wait(list(running), num_returns=1, timeout=min(remaining, POLL_SECONDS))
            for ref in ready:
                key, actor = running.pop(ref)
                try:
                    ray.get(ref)
                except ray.exceptions.RayError as exc:
                    ray.kill(actor)
                    failures[key] = f"its Ray actor failed: {exc}"
                    continue
                self._idle.append(actor)
                on_done(key)
        return failures

    def close(self) -> None:
        for actor in self._idle:
            self._ray.kill(actor)
        self._idle.clear()
