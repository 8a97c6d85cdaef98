"""An HTTP client for console tests: cookies kept, redirects not followed, CSRF from forms."""

from __future__ import annotations

import http.cookiejar
import re
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

__all__ = ["Client", "console_client"]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


@dataclass
class Client:
    """A browser-like HTTP client: cookies kept, redirects not followed."""

    base: str
    opener: urllib.request.OpenerDirector
    jar: http.cookiejar.CookieJar

    def request(
        self, path: str, data: dict[str, str] | None = None, accept: str = "text/html"
    ) -> tuple[int, dict[str, str], str]:
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        req = urllib.request.Request(self.base + path, data=body, headers={"Accept": accept})
        try:
            with self.opener.open(req, timeout=30) as resp:
                return resp.status, dict(resp.headers), resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), err.read().decode()

    def csrf(self, path: str) -> str:
        status, _, page = self.request(path)
        assert status == 200, page
        match = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert match, page
        return match.group(1)

    def login(self, password: str) -> None:
        token = self.csrf("/login")
        status, headers, _ = self.request("/login", {"csrf_token": token, "password": password})
        assert status == 303 and headers["location"] == "/", status


def console_client(url: str, context: ssl.SSLContext | None = None) -> Client:
    jar = http.cookiejar.CookieJar()
    handlers: list[urllib.request.BaseHandler] = [
        urllib.request.HTTPCookieProcessor(jar),
        _NoRedirect(),
    ]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    return Client(url, urllib.request.build_opener(*handlers), jar)
