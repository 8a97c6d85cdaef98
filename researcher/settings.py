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
from common.errors import ConfigurationError
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
        """TLS credentials from ``cert_dir``; None (plain text) only when ``insecure``."""
        if self.insecure:
            log.warning(
                "researcher server runs WITHOUT TLS (--insecure): traffic is readable and "
                "node identities are not verified; use only for local development"
            )
            return None
        if self.cert_dir is None:
            # Never fall back to plain text silently when TLS was asked for.
            raise ConfigurationError(
                "TLS is on (FEDLOOM_INSECURE=0) but no certificate directory is set: set "
                "FEDLOOM_CERT_DIR (`fedloom researcher run --certs DIR`), or FEDLOOM_INSECURE=1 "
                "(--insecure) for local development"
            )
        from common.tls import server_credentials

        return server_credentials(self.cert_dir)

    def authenticator(self) -> NodeAuthenticator:
        """The servicer's node check: certificate identity and allowlist, unless ``insecure``."""
        if self.insecure or self.cert_dir is None:
            return allow_any_node
        from researcher.auth import make_authenticator

        policy = make_authenticator(self.cert_dir)

        def authenticate(context: grpc.ServicerContext, claimed_node_id: str) -> str | None:
            # Abort with the policy's own status (UNAUTHENTICATED: no proof of identity or
            # off the allowlist; PERMISSION_DENIED: claims another node's id) and reason,
            # rather than returning the reason for the servicer to answer with one code.
            policy.node_id(context, claimed_node_id)
            return None

        return authenticate


def runtime_settings() -> RuntimeSettings:
    """Read FEDLOOM_RESEARCHER_ADDRESS, FEDLOOM_OUT, FEDLOOM_INSECURE, FEDLOOM_CERT_DIR."""
    cert_dir = os.environ.get("FEDLOOM_CERT_DIR")
    return RuntimeSettings(
        address=os.environ.get("FEDLOOM_RESEARCHER_ADDRESS", f"127.0.0.1:{DEFAULT_PORT}"),
        out_dir=Path(os.environ.get("FEDLOOM_OUT", "fedloom-runs")),
        insecure=os.environ.get("FEDLOOM_INSECURE", "1" if not cert_dir else "0") == "1",
        cert_dir=Path(cert_dir) if cert_dir else None,
    )
