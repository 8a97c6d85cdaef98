"""Run options of a researcher process: where to listen, where to write, how to secure it.

They are passed explicitly: `Experiment(..., run_options=RunOptions(...))`, or set once as
the process default with `use_run_options`, which is how `fedloom researcher run` applies
its flags to every Experiment a script creates. Nothing is read from the environment.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import grpc

from common.constants import DEFAULT_PORT
from common.errors import ConfigurationError
from researcher.auth import servicer_check
from researcher.servicer import NodeAuthenticator

__all__ = ["RunOptions", "default_run_options", "use_run_options"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOptions:
    """Server address, output root, transport security, and the CLI's --rounds/--resume.

    `insecure=None` means: TLS when `cert_dir` is given, plain text otherwise (local use).
    """

    address: str = f"127.0.0.1:{DEFAULT_PORT}"
    out_dir: Path = Path("fedloom-runs")
    cert_dir: Path | None = None
    insecure: bool | None = None
    rounds: int | None = None
    resume: bool = False

    def __post_init__(self) -> None:
        if self.rounds is not None and self.rounds < 1:
            raise ConfigurationError(f"rounds must be at least 1, got {self.rounds}")
        if self.insecure is False and self.cert_dir is None:
            # Never fall back to plain text silently when TLS was asked for.
            raise ConfigurationError(
                "TLS is on but no certificate directory is given: pass --certs DIR (from "
                "`fedloom certs init`), or --insecure for local development"
            )

    @property
    def uses_tls(self) -> bool:
        return self.cert_dir is not None and self.insecure is not True

    def with_changes(self, *, rounds: int | None = None, resume: bool | None = None) -> RunOptions:
        """A copy with --rounds / --resume changed (None keeps the current value)."""
        return replace(
            self,
            rounds=self.rounds if rounds is None else rounds,
            resume=self.resume if resume is None else resume,
        )

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """TLS credentials from `cert_dir`; None (plain text) without TLS."""
        if not self.uses_tls:
            log.warning(
                "researcher server runs WITHOUT TLS (--insecure): traffic is readable and "
                "node identities are not verified; use only for local development"
            )
            return None
        from common.tls import server_credentials

        assert self.cert_dir is not None
        return server_credentials(self.cert_dir)

    def authenticator(self) -> NodeAuthenticator:
        """The servicer's node check: certificate identity under TLS, the allowlist always
        (``cert_dir/allowed_nodes.txt``, also with ``--insecure --certs DIR``)."""
        return servicer_check(self.cert_dir, insecure=not self.uses_tls)


_default = RunOptions()


def default_run_options() -> RunOptions:
    """The options Experiments use when given none (see `use_run_options`)."""
    return _default


@contextmanager
def use_run_options(options: RunOptions) -> Iterator[RunOptions]:
    """Make `options` the process default inside the block (restored after)."""
    global _default
    previous, _default = _default, options
    try:
        yield options
    finally:
        _default = previous
