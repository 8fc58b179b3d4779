"""Bearer-token authentication, and how a browser carries the token.

With ``TURNGRAPH_API_TOKEN`` set, every request needs ``Authorization: Bearer <token>``.
A browser cannot add that header to a page it opens (nor ``EventSource`` to the live
stream), so a viewer page asked for without it answers 401 with a small form; the
token typed there is posted to ``POST /login``, which sets a cookie holding a key
derived from the token (``HttpOnly``, ``SameSite=Strict``: another site's page can
never send it) and goes back to the page.  Every request then carries the cookie, the
live page's stream and its posts included.  ``POST /logout`` clears it.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import parse_qs

from starlette.responses import HTMLResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from engine.server.errors import Unauthorized, error_body
from engine.server.html import esc, page
from engine.server.http import json

__all__ = ["COOKIE", "BearerAuth"]

COOKIE = "turngraph_viewer"
"""The cookie a browser's viewer session carries (a key derived from the token)."""

_FORM_MAX = 4096  # bytes of a login form read at most


def _viewer_key(token: bytes) -> bytes:
    """The cookie's value: derived, so the cookie jar never holds the token itself."""
    return hmac.new(token, b"turngraph viewer cookie", hashlib.sha256).hexdigest().encode()


def _cookie(headers: list[tuple[bytes, bytes]]) -> bytes:
    for name, value in headers:
        if name == b"cookie":
            for part in value.split(b";"):
                key, _, val = part.strip().partition(b"=")
                if key == COOKIE.encode():
                    return val
    return b""


def _local(target: str) -> str:
    """``target`` when it is a path on this server, else ``/`` (no open redirect)."""
    ok = target.startswith("/") and not target.startswith("//") and "\\" not in target
    return target if ok else "/"


class BearerAuth:
    """Refuses every request without ``Authorization: Bearer <token>`` or the viewer's
    cookie (401: JSON, or the login form for a viewer page; see the module).

    Comparisons are constant-time (:func:`hmac.compare_digest`), so the response time
    tells nothing about how much of a guess was right.
    """

    def __init__(self, app: ASGIApp, token: bytes) -> None:
        self.app = app
        self.token = token
        self.expected = b"bearer " + token
        self.key = _viewer_key(token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path in ("/login", "/logout") and scope["method"] == "POST":
            await self._login(path, scope, receive, send)
            return
        given = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                given = value[:7].lower() + value[7:]
                break
        if hmac.compare_digest(given, self.expected) or hmac.compare_digest(
            _cookie(scope["headers"]), self.key
        ):
            await self.app(scope, receive, send)
            return
        if scope["method"] == "GET" and (path == "/" or path.startswith("/ui/")):
            query = scope.get("query_string", b"").decode(errors="replace")
            here = path + ("?" + query if query else "")
            await _login_form(here, "")(scope, receive, send)
            return
        exc = Unauthorized("a valid `Authorization: Bearer <token>` header is required")
        response = json(error_body(exc), 401)
        response.headers["www-authenticate"] = "Bearer"
        await response(scope, receive, send)

    async def _login(self, path: str, scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while len(body) <= _FORM_MAX:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        fields = parse_qs(body[:_FORM_MAX].decode(errors="replace"))
        back = _local((fields.get("next") or ["/"])[0])
        if path == "/logout":
            response = page("signed out", '<p><a href="/">sign in again</a></p>')
            response.delete_cookie(COOKIE, path="/")
        elif hmac.compare_digest((fields.get("token") or [""])[0].encode(), self.token):
            response = page("signed in", f'<p><a href="{esc(back)}">go on</a></p>', 303)
            response.headers["location"] = back
            response.set_cookie(COOKIE, self.key.decode(), httponly=True, samesite="strict")
        else:
            response = _login_form(back, "wrong token")
        await response(scope, receive, send)


def _login_form(back: str, why: str) -> HTMLResponse:
    """The 401 page a browser gets: a form asking for the server's token."""
    note = f'<p class="fail">{esc(why)}</p>' if why else ""
    body = (
        f"{note}<p>This server needs its API token (<code>TURNGRAPH_API_TOKEN</code>).</p>"
        '<form method="post" action="/login">'
        f'<input type="hidden" name="next" value="{esc(back)}">'
        '<input type="password" name="token" autocomplete="current-password" required> '
        "<button>sign in</button></form>"
    )
    response = page("sign in", body, 401)
    response.headers["www-authenticate"] = "Bearer"
    return response
