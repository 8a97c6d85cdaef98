"""The status page: the daemon's connection, current task, last errors, identity, containment."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from node.console.logs import read_lines
from node.console.web import login_required, render, state
from node.served import ServedTasks
from node.status import StatusBoard

__all__ = ["routes"]

#: Error lines from the node log shown on the status page.
LAST_ERRORS = 8


def certificate_expiry(cert_path: str | None) -> str | None:
    """``notAfter`` of a PEM certificate as ISO-8601 UTC, or a reason it cannot be read."""
    if not cert_path:
        return None
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    except (OSError, ValueError) as exc:
        return f"unreadable ({exc})"
    expiry: datetime = cert.not_valid_after_utc
    left = expiry - datetime.now(UTC)
    return f"{expiry.isoformat(timespec='seconds')} ({left.days} days left)"


def _gather(request: Request) -> dict[str, Any]:
    home = state(request).home
    daemon = StatusBoard(home.db_path).read()
    errors = [line for line in read_lines(home.logs_dir / "node.log") if line.level == "ERROR"]
    failed = [t for t in ServedTasks(home.db_path).list() if t.state == "failed"]
    return {
        "daemon": daemon,
        "running": daemon.running if daemon else False,
        "cert_expiry": certificate_expiry(daemon.cert_path if daemon else None),
        "errors": errors[-LAST_ERRORS:][::-1],
        "failed_tasks": failed[-LAST_ERRORS:][::-1],
        "home_path": home.path,
    }


@login_required
async def status_page(request: Request) -> Response:
    context = await asyncio.to_thread(_gather, request)
    return render(request, "status.html", **context)


routes = [Route("/", status_page, methods=["GET"])]
