"""What this machine lets the node confine, found by trying it in a throw-away process.

The probe (`node.containment.probe`) leaves the network and applies Landlock to itself,
exactly as a training process would, checks that a write outside its box fails, and
prints its findings as JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass

from node.containment.landlock import NET_ABI

__all__ = ["ContainmentSupport", "probe_support"]

#: Seconds the probe may take: it starts a bare interpreter and makes three syscalls.
PROBE_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class ContainmentSupport:
    """The kernel features a training process can be confined with on this machine."""

    landlock_abi: int  # 0: none
    landlock_error: str  # why Landlock could not be applied ("" when it could)
    network: str  # how the network is taken away ("" when it cannot be)
    network_error: str

    @property
    def confines_writes(self) -> bool:
        return self.landlock_abi >= 1 and not self.landlock_error

    @property
    def isolates_network(self) -> bool:
        """True when a plan can be kept off the network (namespace, or Landlock TCP rules)."""
        return bool(self.network) or (self.confines_writes and self.landlock_abi >= NET_ABI)

    def network_means(self) -> str:
        means = [self.network] if self.network else []
        if self.confines_writes and self.landlock_abi >= NET_ABI:
            means.append("Landlock TCP rules")
        return " + ".join(means)


def probe_support() -> ContainmentSupport:
    """Probe in a child process (the probe confines itself, which cannot be undone)."""
    try:
        with tempfile.TemporaryDirectory(prefix="fedloom-probe-") as outside:
            done = subprocess.run(
                [sys.executable, "-m", "node.containment.probe", outside],
                capture_output=True,
                text=True,
                timeout=PROBE_TIMEOUT_SECONDS,
                check=True,
            )
        return ContainmentSupport(**json.loads(done.stdout))
    except (subprocess.SubprocessError, ValueError, TypeError) as exc:
        reason = f"the containment probe failed: {exc}"
        return ContainmentSupport(0, reason, "", reason)
