"""Researcher runtime settings: where to listen and where to write, set by the CLI or env.

`fedloom researcher run` sets these before running the script, so every Experiment the
script creates uses them without naming them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import grpc

from common.constants import DEFAULT_PORT
from researcher.servicer import NodeAuthenticator, allow_any_node

__all__ = ["RuntimeSettings", "runtime_settings"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RuntimeSettings:
    """Address to listen on, output root, and transport security."""

    address: str
    out_dir: Path
    insecure: bool
    cert_dir: Path | None

    def server_credentials(self) -> grpc.ServerCredentials | None:
        if self.insecure or self.cert_dir is None:
            if not self.insecure:
                return None
            log.warning(
                "researcher server runs WITHOUT TLS (--insecure): traffic is readable and "
                "node identities are not verified; use only for local development"
            )
            return None
        from common.tls import server_credentials

        return server_credentials(self.cert_dir)

    def authenticator(self) -> NodeAuthenticator:
        if self.insecure or self.cert_dir is None:
            return allow_any_node
        from researcher.auth import make_authenticator

        return make_authenticator(self.cert_dir)


def runtime_settings() -> RuntimeSettings:
    """Read FEDLOOM_RESEARCHER_ADDRESS, FEDLOOM_OUT, FEDLOOM_INSECURE, FEDLOOM_CERT_DIR."""
    cert_dir = os.environ.get("FEDLOOM_CERT_DIR")
    return RuntimeSettings(
        address=os.environ.get("FEDLOOM_RESEARCHER_ADDRESS", f"127.0.0.1:{DEFAULT_PORT}"),
        out_dir=Path(os.environ.get("FEDLOOM_OUT", "fedloom-runs")),
        insecure=os.environ.get("FEDLOOM_INSECURE", "1" if not cert_dir else "0") == "1",
        cert_dir=Path(cert_dir) if cert_dir else None,
    )
