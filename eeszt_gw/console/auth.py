"""Who is asking: the login session, its CSRF token, and the guard every route goes through.

A session is Starlette's signed cookie (HttpOnly, SameSite=Strict, Secure under TLS) holding
the user's name, when they logged in and a CSRF token; it ends ``session_ttl_s`` after the
login, whatever the activity. The user's role is read from the users file on every request, so
a removed user is out at once. With ``trust_proxy_user_header`` the header names the user
instead of a login (a reverse proxy authenticated them); the session then only carries the
CSRF token, and is bound to that name.
"""

from __future__ import annotations

import functools
import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response

from .users import User, UsersFile

log = logging.getLogger("eeszt.console")
#: the largest form body read (the forms are a few ids and a reason)
MAX_FORM_BYTES = 256 * 1024
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"


class Auth:
    def __init__(self, users: UsersFile, *, ttl_s: float, proxy_header: str | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        self.users, self.ttl_s = users, ttl_s
        self.clock = clock or (lambda: time.time())
        self.proxy_header = (proxy_header or "").strip().lower() or None

    # --- the session ------------------------------------------------------------------------
    @staticmethod
    def csrf_token(request: Request) -> str:
        """This session's CSRF token (made on first use)."""
        token = request.session.get("csrf")
        if not isinstance(token, str) or len(token) < 32:
            token = request.session["csrf"] = secrets.token_urlsafe(32)
        return token

    def user(self, request: Request) -> User | None:
        """The logged-in user, or None."""
        session = request.session
        if self.proxy_header:
            name = request.headers.get(self.proxy_header, "").strip()
            if not name:
                return None
            if session.get("user") != name:  # another user on this browser: a fresh session
                session.clear()
                session["user"] = name
            return self.users.get(name)
        name, at = session.get("user"), session.get("at")
        if not isinstance(name, str) or not isinstance(at, (int, float)):
            return None
        if self.clock() - at > self.ttl_s:
            session.clear()
            return None
        user = self.users.get(name)
        if user is None:
            session.clear()
        return user

    def login(self, request: Request, name: str, password: str) -> User | None:
        """Check the password; on success a new session (new CSRF token) for the user."""
        user = self.users.authenticate(name, password)
        client = request.client.host if request.client else "?"
        if user is None:
            log.warning("console: failed login for user %r from %s", name[:64], client)
            return None
        request.session.clear()  # no session fixation: nothing of the anonymous one is kept
        request.session.update({"user": user.name, "at": self.clock(),
                                "csrf": secrets.token_urlsafe(32)})
        log.info("console: %s (%s) logged in from %s", user.name, user.role, client)
        return user

    @staticmethod
    def logout(request: Request) -> None:
        request.session.clear()

    # --- CSRF -------------------------------------------------------------------------------
    @staticmethod
    async def form(request: Request) -> dict[str, list[str]]:
        """The url-encoded form of a POST (read once, kept on the request)."""
        if not hasattr(request.state, "form"):
            body = await request.body()
            if len(body) > MAX_FORM_BYTES:
                request.state.form = {}
            else:
                request.state.form = parse_qs(body.decode("utf-8", "replace"),
                                              keep_blank_values=True)
        return request.state.form

    async def csrf_ok(self, request: Request) -> bool:
        expected = request.session.get("csrf")
        given = request.headers.get(CSRF_HEADER) or \
            ((await self.form(request)).get(CSRF_FIELD) or [""])[0]
        return isinstance(expected, str) and bool(given) and \
            hmac.compare_digest(expected.encode(), given.encode())

    # --- the guard --------------------------------------------------------------------------
    def guard(self, *, write: bool = False
              ) -> Callable[[Callable[[Request], Awaitable[Response]]],
                            Callable[[Request], Awaitable[Response]]]:
        """A route that needs a logged-in user; a POST also needs the session's CSRF token,
        and ``write`` the operator role. Without a user: /api/* 401 JSON, pages a redirect to
        /login."""

        def wrap(handler: Callable[[Request], Awaitable[Response]]):
            @functools.wraps(handler)
            async def guarded(request: Request) -> Response:
                api = request.url.path.startswith("/api/")
                user = self.user(request)
                if user is None:
                    if api:
                        return JSONResponse({"error": "not logged in"}, status_code=401)
                    if self.proxy_header:
                        return PlainTextResponse("no known user from the proxy", status_code=403)
                    return RedirectResponse("/login", status_code=302)
                if request.method == "POST" and not await self.csrf_ok(request):
                    log.warning("console: %s sent %s %s without a valid CSRF token", user.name,
                                request.method, request.url.path)
                    return _forbidden(api, "missing or wrong CSRF token")
                if write and not user.can_write:
                    log.warning("console: %s (%s) may not %s %s", user.name, user.role,
                                request.method, request.url.path)
                    return _forbidden(api, f"the {user.role} role may not change anything")
                request.state.user = user
                return await handler(request)

            return guarded

        return wrap


def _forbidden(api: bool, why: str) -> Response:
    if api:
        return JSONResponse({"error": why}, status_code=403)
    return PlainTextResponse(f"forbidden: {why}", status_code=403)
