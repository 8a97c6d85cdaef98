"""What every console page shares: the app state, rendering, and the login/CSRF guards."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.templating import Jinja2Templates

from node.actions import Actor
from node.console.auth import CSRF_FIELD, Session, SessionStore
from node.console.hash_state import HashStates
from node.home import NodeHome

__all__ = ["ConsoleState", "Handler", "actor", "form_of", "login_required", "render", "state"]

Handler = Callable[[Request], Awaitable[Response]]

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


@dataclass
class ConsoleState:
    """Everything a page needs: the home it serves, the session store, dataset checks."""

    home: NodeHome
    sessions: SessionStore
    hash_states: HashStates


def state(request: Request) -> ConsoleState:
    console: ConsoleState = request.app.state.console
    return console


def session_of(request: Request) -> Session:
    """The authenticated session that ``login_required`` put on the request."""
    session: Session = request.state.session
    return session


def actor(request: Request) -> Actor:
    """The audit trail's name for this console user: the client address."""
    return Actor("console", f"operator@{session_of(request).address}")


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> Response:
    """A page from ``templates/`` with the node, the session's CSRF token and the nav."""
    console = state(request)
    session: Session | None = getattr(request.state, "session", None)
    return TEMPLATES.TemplateResponse(
        request,
        template,
        {
            "node_name": console.home.name,
            "node_id": console.home.node_id,
            "csrf_field": CSRF_FIELD,
            "csrf_token": session.csrf_token if session else "",
            "path": request.url.path,
            **context,
        },
        status_code=status_code,
    )


def login_required(handler: Handler) -> Handler:
    """Refuse requests without a logged-in session; state changes also need the CSRF token.

    A page request without a session is sent to the login page; anything else (a form
    post, an event stream, an export) gets 403, so no action ever runs unauthenticated.
    A POST whose form lacks the session's CSRF token is refused with 403 before the
    handler runs, whatever it would have done.
    """

    @functools.wraps(handler)
    async def guarded(request: Request) -> Response:
        session = state(request).sessions.current(request)
        if session is None or not session.authenticated:
            if request.method == "GET" and request.headers.get("accept", "").startswith(
                "text/html"
            ):
                return RedirectResponse("/login", status_code=303)
            return PlainTextResponse(
                "not logged in: open /login and sign in with the console password",
                status_code=403,
            )
        request.state.session = session
        if request.method != "GET":
            form = await request.form()
            token = form.get(CSRF_FIELD)
            if not session.csrf_ok(token if isinstance(token, str) else None):
                return PlainTextResponse(
                    "the form's CSRF token is missing or wrong: reload the page and try again",
                    status_code=403,
                )
            request.state.form = form
        return await handler(request)

    return guarded


def form_of(request: Request) -> FormData:
    """The form ``login_required`` already parsed (and checked) for this POST."""
    form: FormData = request.state.form
    return form


def text_field(form: FormData, name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""
