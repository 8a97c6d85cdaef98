"""Console sessions, login and CSRF protection.

A session is a random token in an HttpOnly, SameSite=Strict cookie, mapped to server-side
state in this process (a console restart logs everyone out, which is fine for a handful of
operators). Every visitor gets a session, anonymous until login, so the login form carries
a CSRF token too; logging in replaces the session id (no fixation). A session also
remembers which console secret it logged in with: ``--reset-password`` ends it.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response

from node.console_password import password_generation

__all__ = ["CSRF_FIELD", "SESSION_COOKIE", "Session", "SessionStore"]

SESSION_COOKIE = "fedloom_console"
#: Name of the hidden form field carrying the CSRF token.
CSRF_FIELD = "csrf_token"
#: An idle session ends after 8 hours: a working day at the console without logging in again.
SESSION_IDLE_SECONDS = 8 * 3600
#: Anonymous sessions kept at most (each costs a few hundred bytes); oldest dropped first,
#: so a client opening sessions in a loop cannot grow the console's memory without bound.
MAX_SESSIONS = 10_000


@dataclass
class Session:
    """Server-side state of one browser session."""

    id: str
    csrf_token: str
    address: str
    password_generation: str | None = None
    last_seen: float = field(default_factory=time.monotonic)

    @property
    def authenticated(self) -> bool:
        return self.password_generation is not None

    def csrf_ok(self, token: str | None) -> bool:
        """True when ``token`` is this session's CSRF token (constant-time comparison)."""
        return token is not None and hmac.compare_digest(token, self.csrf_token)


class SessionStore:
    """Sessions of one console process, keyed by their cookie token."""

    def __init__(self, db_path: Path, *, secure_cookies: bool) -> None:
        self._db_path = db_path
        self._secure = secure_cookies
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def _new(self, address: str) -> Session:
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), address)
        with self._lock:
            while len(self._sessions) >= MAX_SESSIONS:
                self._sessions.pop(next(iter(self._sessions)))
            self._sessions[session.id] = session
        return session

    def current(self, request: Request) -> Session | None:
        """The request's live session, or ``None`` (no cookie, unknown, expired or reset)."""
        token = request.cookies.get(SESSION_COOKIE)
        if not token:
            return None
        with self._lock:
            session = self._sessions.get(token)
            if session is None:
                return None
            if time.monotonic() - session.last_seen > SESSION_IDLE_SECONDS:
                del self._sessions[token]
                return None
            session.last_seen = time.monotonic()
        if session.authenticated and session.password_generation != password_generation(
            self._db_path
        ):
            self.end(session)  # the secret was reset since this login
            return None
        return session

    def current_or_new(self, request: Request) -> tuple[Session, bool]:
        """The request's session, or a new anonymous one (second value True when new)."""
        session = self.current(request)
        if session is not None:
            return session, False
        return self._new(_client_address(request)), True

    def login(self, old: Session, request: Request) -> Session:
        """Replace ``old`` by a fresh authenticated session (new id and CSRF token)."""
        self.end(old)
        session = self._new(_client_address(request))
        session.password_generation = password_generation(self._db_path)
        return session

    def end(self, session: Session) -> None:
        with self._lock:
            self._sessions.pop(session.id, None)

    def set_cookie(self, response: Response, session: Session) -> None:
        response.set_cookie(
            SESSION_COOKIE,
            session.id,
            httponly=True,
            samesite="strict",
            secure=self._secure,
            path="/",
        )


def _client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"
