"""The console's web application (Starlette): pages, their JSON twins under /api, and the
replay and purge forms. Every route but /login goes through :meth:`Auth.guard`; the work is
done by :class:`eeszt_gw.console.data.Gateway`, i.e. by the CLI's own functions."""

from __future__ import annotations

import logging
import secrets
from pathlib import Path
from typing import Any

import pika.exceptions
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from schemas.audit import AuditKind, mask_text
from schemas.soap import SERVICES

from eeszt_gw.amqp import BrokerTLS, safe_url
from eeszt_gw.config import UsageError
from eeszt_gw.ops.status_broker import BrokerUnreachable, describe_error
from eeszt_gw.ops.status_view import age

from .auth import Auth
from .data import Gateway
from .settings import ConsoleSettings
from .users import UsersFile

log = logging.getLogger("eeszt.console")
TEMPLATES = Jinja2Templates(directory=str(Path(__file__).with_name("templates")))
TEMPLATES.env.filters["age"] = age
SESSION_COOKIE = "eeszt_console"
#: the most dead letters one listing shows, in queue order (the filters narrow it down)
LIST_LIMIT = 500
BROKER_ERRORS = (BrokerUnreachable, pika.exceptions.AMQPError, OSError)


class SecurityHeaders:
    """A per-request CSP nonce for the inline script and style, and headers that keep pages
    out of caches and frames. Pure ASGI, so streaming and sessions are untouched."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        nonce = secrets.token_urlsafe(16)
        scope.setdefault("state", {})["nonce"] = nonce
        csp = (f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
               "connect-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; "
               "frame-ancestors 'none'")

        async def with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(b"content-security-policy", csp.encode()),
                            (b"x-content-type-options", b"nosniff"),
                            (b"referrer-policy", b"no-referrer"),
                            (b"x-frame-options", b"DENY"),
                            (b"cache-control", b"no-store")]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)


def create_app(settings: ConsoleSettings, tls: BrokerTLS | None = None, *,
               gateway: Gateway | None = None, session_secret: str | None = None) -> Starlette:
    """The console for ``settings`` (``users_file`` required). ``gateway`` replaces the broker
    side (tests); ``session_secret`` signs the cookies (default: random per process, so a
    restart logs everyone out)."""
    if settings.users_file is None:
        raise UsageError("--users-file: required (create it with `eeszt-gw console add-user`)")
    users = UsersFile(settings.users_file)
    auth = Auth(users, ttl_s=settings.session_ttl_s, proxy_header=settings.trust_proxy_user_header)
    gw = gateway or Gateway(settings, tls)
    guard = auth.guard

    def page(request: Request, template: str, status: int = 200, **context: Any) -> Response:
        context |= {"user": getattr(request.state, "user", None),
                    "csrf": auth.csrf_token(request), "nonce": request.state.nonce,
                    "broker": safe_url(settings.broker_url), "services": list(SERVICES),
                    "path": request.url.path}
        return TEMPLATES.TemplateResponse(request, template, context, status_code=status)

    def trouble(request: Request, exc: Exception, api: bool) -> Response:
        if isinstance(exc, UsageError):
            status, message = 400, "; ".join(exc.lines)
        else:
            status = 503
            message = f"broker {safe_url(settings.broker_url)}: {describe_error(exc)}"
            log.warning("console: %s", message)
        message = mask_text(message)
        if api:
            return JSONResponse({"error": message}, status_code=status)
        return page(request, "error.html", status, message=message)

    async def call(request: Request, api: bool, fn: Any, *args: Any, **kw: Any) -> Any:
        try:
            return await run_in_threadpool(fn, *args, **kw)
        except (UsageError, *BROKER_ERRORS) as exc:
            return trouble(request, exc, api)

    # --- login --------------------------------------------------------------------------------
    async def login_page(request: Request) -> Response:
        if auth.proxy_header:
            return RedirectResponse("/", status_code=302)
        return page(request, "login.html", error=None)

    async def login(request: Request) -> Response:
        if auth.proxy_header:
            return RedirectResponse("/", status_code=302)
        if not await auth.csrf_ok(request):
            return page(request, "login.html", 403, error="The form had expired: try again.")
        form = await auth.form(request)
        name = (form.get("username") or [""])[0].strip()
        password = (form.get("password") or [""])[0]
        user = await run_in_threadpool(auth.login, request, name, password)
        if user is None:
            return page(request, "login.html", 401, error="Wrong user name or password.")
        return RedirectResponse("/", status_code=303)

    @guard()
    async def logout(request: Request) -> Response:
        log.info("console: %s logged out", request.state.user.name)
        auth.logout(request)
        return RedirectResponse("/login", status_code=303)

    # --- overview and workers -----------------------------------------------------------------
    @guard()
    async def overview(request: Request) -> Response:
        report = await call(request, False, gw.overview)
        if isinstance(report, Response):
            return report
        return page(request, "overview.html", report=report, refresh_s=settings.refresh_s)

    @guard()
    async def api_overview(request: Request) -> Response:
        report = await call(request, True, gw.overview)
        return report if isinstance(report, Response) else JSONResponse(report)

    @guard()
    async def workers(request: Request) -> Response:
        report = await call(request, False, gw.overview)
        if isinstance(report, Response):
            return report
        return page(request, "workers.html", report=report)

    # --- dead letters -------------------------------------------------------------------------
    def filters(request: Request) -> dict[str, str]:
        q = request.query_params
        return {k: q.get(k, "").strip() for k in ("service", "code", "reason", "since", "until")}

    async def listing(request: Request, api: bool) -> Any:
        f = filters(request)
        try:
            sel = gw.selector(**f, limit=LIST_LIMIT)
        except UsageError as exc:
            return trouble(request, exc, api)
        return await call(request, api, gw.dead_letters, sel)

    @guard()
    async def dead_letters(request: Request) -> Response:
        rows = await listing(request, False)
        if isinstance(rows, Response):
            return rows
        return page(request, "dead_letters.html", rows=rows, f=filters(request),
                    limit=LIST_LIMIT)

    @guard()
    async def api_dead_letters(request: Request) -> Response:
        rows = await listing(request, True)
        return rows if isinstance(rows, Response) else JSONResponse(rows)

    @guard()
    async def dead_letter(request: Request) -> Response:
        ref = request.path_params["ref"]
        shown = await call(request, False, gw.dead_letter, ref)
        if isinstance(shown, Response):
            return shown
        return page(request, "dead_letter.html", 200 if shown else 404, ref=mask_text(ref),
                    raw_ref=ref, shown=shown)

    async def change(request: Request, kind: AuditKind) -> Response:
        form = await auth.form(request)
        one = lambda k: (form.get(k) or [""])[0].strip()  # noqa: E731
        ids = tuple(i.strip() for i in form.get("id", []) if i.strip())
        try:
            sel = gw.selector(ids=ids, service=one("service"), code=one("code"),
                              reason=one("reason_filter"), older_than=one("older_than"))
        except UsageError as exc:
            return trouble(request, exc, False)
        user = request.state.user
        result = await call(request, False, gw.change, kind, sel, who=user.name, why=one("why"))
        if isinstance(result, Response):
            return result
        log.info("console: %s", result["summary"])
        return page(request, "result.html", result=result)

    @guard(write=True)
    async def replay(request: Request) -> Response:
        return await change(request, AuditKind.REPLAYED)

    @guard(write=True)
    async def purge(request: Request) -> Response:
        return await change(request, AuditKind.PURGED)

    # --- one request's story ------------------------------------------------------------------
    async def story(request: Request, api: bool) -> Any:
        q = request.query_params
        ref = q.get("id", "").strip()
        if not ref:
            return None
        return await call(request, api, gw.story, ref, q.get("since", "").strip(),
                          q.get("until", "").strip())

    @guard()
    async def audit(request: Request) -> Response:
        events = await story(request, False)
        if isinstance(events, Response):
            return events
        return page(request, "audit.html", events=events, ref=mask_text(
            request.query_params.get("id", "")), since=request.query_params.get("since", ""),
            until=request.query_params.get("until", ""))

    @guard()
    async def api_audit(request: Request) -> Response:
        events = await story(request, True)
        if events is None:
            return JSONResponse({"error": "id: give a message id or an idempotency key"}, 400)
        return events if isinstance(events, Response) else JSONResponse(events)

    routes = [
        Route("/login", login_page, methods=["GET"]), Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/", overview), Route("/api/overview", api_overview),
        Route("/workers", workers),
        Route("/dead-letters", dead_letters), Route("/api/dead-letters", api_dead_letters),
        Route("/dead-letters/replay", replay, methods=["POST"]),
        Route("/dead-letters/purge", purge, methods=["POST"]),
        Route("/dead-letters/{ref:path}", dead_letter),
        Route("/audit", audit), Route("/api/audit", api_audit),
    ]
    middleware = [
        Middleware(SecurityHeaders),
        Middleware(SessionMiddleware, secret_key=session_secret or secrets.token_urlsafe(48),
                   session_cookie=SESSION_COOKIE, max_age=int(settings.session_ttl_s),
                   same_site="strict", https_only=settings.tls_cert is not None),
    ]
    return Starlette(routes=routes, middleware=middleware)
