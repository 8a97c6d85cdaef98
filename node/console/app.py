"""The console's Starlette application over one node home."""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from node.audit import AuditTrail
from node.console.auth import SessionStore
from node.console.hash_state import HashStates
from node.console.pages import audit, datasets, experiments, login, logs, plans, status
from node.console.web import ConsoleState
from node.home import NodeHome
from node.plans import PlanRegistry
from node.served import ServedTasks
from node.status import StatusBoard

__all__ = ["create_app"]

#: Sent with every response: no framing (clickjacking a decision button), no inline or
#: third-party scripts, no referrer leaking plan ids.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class _SecurityHeaders:
    """ASGI middleware adding ``SECURITY_HEADERS`` (streaming responses included)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: dict[str, object]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))  # type: ignore[call-overload]
                headers += [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)  # type: ignore[arg-type]


def create_app(home: NodeHome, *, secure_cookies: bool = False) -> Starlette:
    """The console for ``home``; ``secure_cookies`` when served over TLS."""
    # Create every table the pages read, so a fresh home shows empty pages, not errors.
    for table in (AuditTrail, PlanRegistry, ServedTasks, StatusBoard):
        table(home.db_path)
    routes = [
        *login.routes,
        *status.routes,
        *datasets.routes,
        *plans.routes,
        *experiments.routes,
        *logs.routes,
        *audit.routes,
        Mount(
            "/static", StaticFiles(directory=str(Path(__file__).parent / "static")), name="static"
        ),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(_SecurityHeaders)])
    app.state.console = ConsoleState(
        home,
        SessionStore(home.db_path, secure_cookies=secure_cookies),
        HashStates(home.db_path),
    )
    return app
