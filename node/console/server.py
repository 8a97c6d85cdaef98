"""Starting the console: the bind-address rule, the first-start secret, uvicorn."""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path

import uvicorn

from common.errors import ConfigurationError
from node.console.app import create_app
from node.console_password import ensure_password
from node.home import NodeHome

__all__ = ["check_bind", "is_loopback", "serve_console"]

#: Seconds open requests (event streams of live pages) get to finish when the console stops.
SHUTDOWN_GRACE_SECONDS = 3


def is_loopback(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost may resolve anywhere
        return False


def check_bind(host: str, cert: str | None, key: str | None) -> tuple[Path, Path] | None:
    """The TLS files to serve with, after checking the bind rule; ``None`` for plain HTTP.

    Off loopback the login secret and session cookie would cross the network, so TLS is
    required there; on loopback it is optional.
    """
    if (cert is None) != (key is None):
        raise ConfigurationError(
            "--cert and --key go together: the console's TLS certificate and its private key"
        )
    if cert is None or key is None:
        if not is_loopback(host):
            raise ConfigurationError(
                f"the console refuses to listen on {host} without TLS: off this machine the "
                "login secret and session cookie would travel in clear. Pass --cert and --key "
                "(the node's TLS certificate from `fedloom certs add-node`, or your own), or "
                "bind --host 127.0.0.1 and reach it through an SSH tunnel"
            )
        return None
    files = (Path(cert), Path(key))
    for option, path in zip(("--cert", "--key"), files, strict=True):
        if not path.is_file():
            raise ConfigurationError(f"{option} file {path} does not exist")
    return files


def serve_console(
    home: NodeHome,
    *,
    host: str = "127.0.0.1",
    port: int = 8484,
    cert: str | None = None,
    key: str | None = None,
) -> int:
    """Serve the console until interrupted; returns the process exit code."""
    tls = check_bind(host, cert, key)
    secret = ensure_password(home.db_path)
    if secret is not None:
        # Written to the terminal, never to a log file: it is shown this once.
        sys.stdout.write(
            f"Web console password (shown only this once; `fedloom node --home {home.path} "
            f"console --reset-password` replaces it): {secret}\n"
        )
    scheme = "https" if tls else "http"
    shown = f"[{host}]" if ":" in host else host
    sys.stdout.write(
        f"Node console for {home.name} ({home.node_id}) at {scheme}://{shown}:{port}/\n"
    )
    sys.stdout.flush()
    app = create_app(home, secure_cookies=tls is not None)
    uvicorn.run(
        app,
        host=host,
        port=port,
        ssl_certfile=str(tls[0]) if tls else None,
        ssl_keyfile=str(tls[1]) if tls else None,
        log_level="warning",
        # The console may sit behind nothing but itself: never trust X-Forwarded-For.
        proxy_headers=False,
        server_header=False,
        # Live pages keep event streams open; on Ctrl-C they are cut after this many seconds
        # instead of holding the console until every browser tab is closed.
        timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
    )
    return 0
