"""Logging in and out with the console secret."""

from __future__ import annotations

import asyncio

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from node.console.auth import CSRF_FIELD, Session
from node.console.web import render, state
from node.console_password import check_password

__all__ = ["routes"]

#: Seconds added to every failed login: with scrypt's own cost it keeps online guessing
#: slow, and a 128-bit random secret is out of reach anyway.
FAILED_LOGIN_DELAY = 1.0


async def _posted(request: Request) -> tuple[Session | None, FormData]:
    """The request's session if its form carries that session's CSRF token, and the form.

    Login and logout run before (or without) ``login_required``, so they check it here.
    """
    session = state(request).sessions.current(request)
    form = await request.form()
    token = form.get(CSRF_FIELD)
    if session is None or not session.csrf_ok(token if isinstance(token, str) else None):
        return None, form
    return session, form


async def login_page(request: Request) -> Response:
    session, new = state(request).sessions.current_or_new(request)
    if session.authenticated:
        return RedirectResponse("/", status_code=303)
    request.state.session = session
    response = render(request, "login.html", error=None)
    if new:
        state(request).sessions.set_cookie(response, session)
    return response


async def login(request: Request) -> Response:
    console = state(request)
    session, form = await _posted(request)
    if session is None:
        return PlainTextResponse(
            "the login form expired or came from elsewhere: open /login again", status_code=403
        )
    secret = form.get("password")
    ok = isinstance(secret, str) and await asyncio.to_thread(
        check_password, console.home.db_path, secret
    )
    if not ok:
        await asyncio.sleep(FAILED_LOGIN_DELAY)
        request.state.session = session
        return render(
            request,
            "login.html",
            status_code=401,
            error="wrong password: use the one shown at `node init` or first console start, "
            "or replace it with `fedloom node console --reset-password`",
        )
    fresh = console.sessions.login(session, request)
    response = RedirectResponse("/", status_code=303)
    console.sessions.set_cookie(response, fresh)
    return response


async def logout(request: Request) -> Response:
    console = state(request)
    session, _ = await _posted(request)
    if session is not None:
        console.sessions.end(session)
    return RedirectResponse("/login", status_code=303)


routes = [
    Route("/login", login_page, methods=["GET"]),
    Route("/login", login, methods=["POST"]),
    Route("/logout", logout, methods=["POST"]),
]
