"""How a node confines its training processes: memory cap, threads, write/network confinement.

Set in the home's ``config.toml``::

    [containment]
    max_memory_mb = 8192      # per task, added to its forked size; 0: no limit
                              # (absent: half the machine's RAM)
    confinement = "auto"      # "auto": confine where the kernel allows, say so otherwise
                              # "require": refuse to start without write and network
                              #            confinement; "off": neither
    threads = 0               # per task: threads torch and BLAS may use; 0: their
                              # default (one per CPU the node may use)

``fedloom node start --max-memory-mb``, ``--confinement`` and ``--threads`` override the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from common.errors import ConfigurationError
from common.proto import fedloom_pb2 as pb
from node.containment.errors import ContainmentError
from node.containment.memory import DEFAULT_MEMORY_FRACTION, default_memory_limit_mb
from node.containment.support import ContainmentSupport

__all__ = ["CONFINEMENT_MODES", "ContainmentSettings"]

CONFINEMENT_MODES = ("auto", "require", "off")

_MIB = 1024 * 1024


@dataclass(frozen=True)
class ContainmentSettings:
    """The operator's choice; `worker_limits` turns it into what a task process applies."""

    max_memory_mb: int
    confinement: str = "auto"
    memory_from_default: bool = False
    threads: int = 0

    def __post_init__(self) -> None:
        if (
            not isinstance(self.max_memory_mb, int)
            or isinstance(self.max_memory_mb, bool)
            or self.max_memory_mb < 0
        ):
            raise ConfigurationError(
                f"max_memory_mb must be a whole number of MB, 0 for no limit; got {self.max_memory_mb!r}"
            )
        if not isinstance(self.threads, int) or isinstance(self.threads, bool) or self.threads < 0:
            raise ConfigurationError(
                f"threads must be a whole number of threads per task, 0 for torch's default; "
                f"got {self.threads!r}"
            )
        if self.confinement not in CONFINEMENT_MODES:
            raise ConfigurationError(
                f"confinement must be one of {', '.join(CONFINEMENT_MODES)}; got {self.confinement!r}"
            )

    @classmethod
    def resolve(
        cls,
        config: Mapping[str, Any],
        *,
        max_memory_mb: int | None = None,
        confinement: str | None = None,
        threads: int | None = None,
    ) -> ContainmentSettings:
        """Command-line values first, then the home's [containment] table, then defaults."""
        table = config.get("containment", {})
        if not isinstance(table, Mapping):
            raise ConfigurationError("[containment] in config.toml must be a table")
        unknown = sorted(set(table) - {"max_memory_mb", "confinement", "threads"})
        if unknown:
            raise ConfigurationError(
                f"unknown key(s) {unknown} in [containment] of config.toml; "
                "known ones are max_memory_mb, confinement and threads"
            )
        memory = max_memory_mb if max_memory_mb is not None else table.get("max_memory_mb")
        mode = confinement or table.get("confinement", "auto")
        count = threads if threads is not None else table.get("threads", 0)
        if memory is None:
            return cls(default_memory_limit_mb(), mode, memory_from_default=True, threads=count)
        return cls(memory, mode, threads=count)

    def worker_limits(self, support: ContainmentSupport) -> pb.WorkerLimits:
        """The limits each task applies; ContainmentError when `require` cannot be met."""
        confine = self.confinement != "off"
        if self.confinement == "require" and not (
            support.confines_writes and support.isolates_network
        ):
            missing = []
            if not support.confines_writes:
                missing.append(f"write confinement ({support.landlock_error or 'no Landlock'})")
            if not support.isolates_network:
                missing.append(f"network isolation ({support.network_error})")
            raise ContainmentError(
                "confinement = 'require' but this machine cannot provide "
                + " nor ".join(missing)
                + ": run the node on a kernel with Landlock (Linux >= 5.13, 'landlock' in "
                "lsm=) or set confinement = 'auto' to accept running plans unconfined"
            )
        return pb.WorkerLimits(
            max_memory_bytes=self.max_memory_mb * _MIB,
            confine_writes=confine and support.confines_writes,
            isolate_network=confine and support.isolates_network,
            threads=self.threads,
        )

    def describe(self, support: ContainmentSupport) -> list[tuple[bool, str]]:
        """(ok, sentence) lines for `node start` to log: what is confined, and what is not."""
        lines: list[tuple[bool, str]] = []
        if self.max_memory_mb == 0:
            lines.append((False, "training tasks have NO memory limit (max_memory_mb = 0)"))
        else:
            origin = (
                f" ({DEFAULT_MEMORY_FRACTION:.0%} of this machine's RAM, the default)"
                if self.memory_from_default
                else ""
            )
            lines.append((True, f"training tasks may use {self.max_memory_mb} MB{origin}"))
        if self.threads:
            lines.append((True, f"training tasks use {self.threads} thread(s) for torch and BLAS"))
        lines.append((True, "every process a plan starts is killed when its task ends"))
        if self.confinement == "off":
            lines.append(
                (False, "confinement = 'off': plans may write anywhere and use the network")
            )
            return lines
        if support.confines_writes:
            lines.append(
                (
                    True,
                    f"plans write only to their task folder and their experiment's state "
                    f"(Landlock ABI {support.landlock_abi})",
                )
            )
        else:
            lines.append(
                (
                    False,
                    "plans are NOT confined to their task folder: "
                    f"{support.landlock_error or 'no Landlock in this kernel'}; set "
                    "confinement = 'require' in [containment] to refuse to start instead",
                )
            )
        if support.isolates_network:
            lines.append((True, f"plans have no network ({support.network_means()})"))
        else:
            lines.append(
                (False, f"plans CAN use the network: {support.network_error or 'no mechanism'}")
            )
        return lines
