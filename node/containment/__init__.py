"""Containment of training plans: what a task's processes may do, and their end with the task.

- `settings`: the operator's choice (memory cap, confinement mode) from config and CLI;
- `support`: what this kernel provides, probed in a throw-away process;
- `confine`: applied by the training process to itself (network, Landlock, memory);
- `reaper`: the supervisor kills every process a plan left behind;
- `landlock`, `network`, `memory`, `syscalls`: the kernel interfaces behind them.
"""

from node.containment.confine import confine_process
from node.containment.errors import ContainmentError
from node.containment.memory import (
    DEFAULT_MEMORY_FRACTION,
    default_memory_limit_mb,
    oom_kill_count,
)
from node.containment.reaper import descendants, kill_descendants
from node.containment.settings import CONFINEMENT_MODES, ContainmentSettings
from node.containment.support import ContainmentSupport, probe_support
from node.containment.syscalls import become_subreaper, set_parent_death_signal

__all__ = [
    "CONFINEMENT_MODES",
    "DEFAULT_MEMORY_FRACTION",
    "ContainmentError",
    "ContainmentSettings",
    "ContainmentSupport",
    "become_subreaper",
    "confine_process",
    "default_memory_limit_mb",
    "descendants",
    "kill_descendants",
    "oom_kill_count",
    "probe_support",
    "set_parent_death_signal",
]
