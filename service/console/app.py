"""The console's Starlette app: the resources it owns, the guard every page passes, the auth routes.

Every page but sign-in, the static files and ``/enrol``'s start needs a session; every page but
``/enrol`` needs the console role; every POST needs the session's CSRF token.  Nothing here is
mounted on the public webhook app, so the public port answers 404 for every console path.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import secrets
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jinja2
import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from service.console import i18n
from service.console.audit import AuditLog
from service.console.sessions import COOKIE, LOCAL, MICROSOFT, ConsoleSession, CookieSigner, SessionStore
from service.console.signin import MicrosoftSignIn, SignInError
from service.core.passwords import verify_password
from service.core.settings import Settings, reveal
from service.core.storage import connect_worker

log = logging.getLogger(__name__)

# Forms are small; the largest is a credentials CSV (at most 4 MiB, as the CLI accepts).
MAX_FORM_BYTES = 5 * 1024 * 1024
LOGIN_CSRF_COOKIE = "pb_login_csrf"
Handler = Callable[[Request], Awaitable[Response]]

_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # The sign-in callback's URL carries an authorization code: never hand it on as a referrer.
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass
class Console:
    """What every console page reads: settings, Redis, sessions, sign-in, audit, templates."""

    settings: Settings
    redis: aioredis.Redis
    http: aiohttp.ClientSession
    base_url: str
    sessions: SessionStore
    signin: MicrosoftSignIn
    audit: AuditLog
    templates: Jinja2Templates
    background: set[Any] = field(default_factory=set)

    @property
    def secure_cookies(self) -> bool:
        return self.base_url.startswith("https://")

    @property
    def bridge_name(self) -> str:
        return urllib.parse.urlsplit(self.settings.public_base_url).hostname or "presence-bridge"

    def render(
        self,
        request: Request,
        template: str,
        status: int = 200,
        session: ConsoleSession | None = None,
        **context: Any,
    ) -> Response:
        language = i18n.choose(request.cookies.get(i18n.COOKIE), request.headers.get("accept-language", ""))
        session = session or getattr(request.state, "session", None)
        values = {
            "t": i18n.translator(language),
            "lang": language,
            "other_lang": "de" if language == "en" else "en",
            "session": session,
            "csrf": session.csrf if session else "",
            "bridge": self.bridge_name,
            "path": request.url.path,
            "enrolment": self.settings.console_enrolment,
            **context,
        }
        return self.templates.TemplateResponse(request, template, values, status_code=status)

    def set_session_cookie(self, response: Response, cookie: str) -> None:
        response.set_cookie(
            COOKIE,
            cookie,
            httponly=True,
            secure=self.secure_cookies,
            samesite="lax",
            path="/",
        )


def console_of(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


async def read_form(request: Request) -> FormData:
    """The request's form, bounded; an oversized or unreadable body is a 400 page, never a 5xx."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_FORM_BYTES):
        raise HTTPException(413, "the form is larger than 5 MiB")
    try:
        return await request.form(max_files=1, max_fields=20_000, max_part_size=MAX_FORM_BYTES)
    except HTTPException:
        raise
    except Exception as exc:  # a malformed multipart body raises the parser's own errors
        raise HTTPException(400, f"the form could not be read ({type(exc).__name__})") from None


def safe_next(value: str | None) -> str:
    """Only a path on this console: an open redirect would hand a signed-in user to anyone."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


def guarded(handler: Handler, *, admin: bool = True) -> Handler:
    """Session (else sign-in), role (else 403), CSRF on every POST (else 403)."""

    async def wrapped(request: Request) -> Response:
        console = console_of(request)
        session = await console.sessions.load(request.cookies.get(COOKIE))
        if session is None:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            login = "/enrol/start" if not admin else "/login"
            return RedirectResponse(f"{login}?next={urllib.parse.quote(target)}", status_code=303)
        request.state.session = session
        if admin and not session.admin:
            return console.render(request, "forbidden.html", status=403)
        if request.method == "POST":
            form = await read_form(request)
            token = form.get("csrf")
            if not isinstance(token, str) or not hmac.compare_digest(token.encode(), session.csrf.encode()):
                return console.render(request, "forbidden.html", status=403, csrf_failed=True)
            request.state.form = form
        return await handler(request)

    return wrapped


def form_of(request: Request) -> FormData:
    form: FormData = request.state.form
    return form


def text_field(form: FormData, name: str, limit: int = 1000) -> str:
    value = form.get(name)
    return value[:limit] if isinstance(value, str) else ""


# -- sign-in -------------------------------------------------------------------------------------


async def login_page(request: Request) -> Response:
    console = console_of(request)
    if request.method == "GET":
        token = secrets.token_urlsafe(24)
        response = console.render(
            request,
            "login.html",
            login_csrf=token,
            next=safe_next(request.query_params.get("next")),
            microsoft=console.signin.available,
            local=bool(console.settings.console_admin_user),
            error=request.query_params.get("error", "")[:300],
        )
        response.set_cookie(
            LOGIN_CSRF_COOKIE, token, httponly=True, secure=console.secure_cookies, samesite="strict"
        )
        return response
    form = await read_form(request)
    next_path = safe_next(text_field(form, "next"))
    expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    given = text_field(form, "login_csrf")
    if not expected or not hmac.compare_digest(expected.encode(), given.encode()):
        return console.render(request, "forbidden.html", status=403, csrf_failed=True)
    user = text_field(form, "username", 200)
    password = text_field(form, "password", 1000)
    wanted_user = console.settings.console_admin_user or ""
    stored = reveal(console.settings.console_admin_password_hash)
    # The hash is computed even for a wrong user name, so timing does not tell which was wrong.
    password_ok = verify_password(password, stored) if stored else False
    user_ok = bool(wanted_user) and hmac.compare_digest(user.encode(), wanted_user.encode())
    if not (user_ok and password_ok):
        log.warning("console: break-glass sign-in refused")
        await console.audit.write(user or "?", "sign-in refused", "break-glass account")
        return console.render(
            request,
            "login.html",
            status=401,
            login_csrf=expected,
            next=next_path,
            microsoft=console.signin.available,
            local=True,
            failed=True,
        )
    cookie, _ = await console.sessions.create(who=wanted_user, name=wanted_user, method=LOCAL, admin=True)
    await console.audit.write(wanted_user, "signed in", "break-glass account")
    response = RedirectResponse(next_path, status_code=303)
    console.set_session_cookie(response, cookie)
    return response


async def microsoft_start(request: Request, purpose: str = "console") -> Response:
    console = console_of(request)
    if not console.signin.available:
        return RedirectResponse(
            "/login?error=" + urllib.parse.quote("Microsoft sign-in is not configured"), 303
        )
    try:
        url = await console.signin.begin(purpose, safe_next(request.query_params.get("next")))
    except SignInError as exc:
        return RedirectResponse("/login?error=" + urllib.parse.quote(exc.reason), status_code=303)
    return RedirectResponse(url, status_code=303)


async def microsoft_callback(request: Request) -> Response:
    console = console_of(request)
    if request.method == "POST":
        form = await read_form(request)
        query = {k: v[:4096] for k, v in form.items() if isinstance(v, str)}
    else:
        query = {k: v[:4096] for k, v in request.query_params.items()}
    try:
        identity, pending = await console.signin.finish(query)
    except SignInError as exc:
        return RedirectResponse("/login?error=" + urllib.parse.quote(exc.reason), status_code=303)
    admin = console.signin.may_administer(identity)
    who = identity.username or identity.oid
    cookie, _ = await console.sessions.create(
        who=who, name=identity.name or who, method=MICROSOFT, admin=admin, oid=identity.oid
    )
    await console.audit.write(who, "signed in", "Microsoft" + ("" if admin else " (no console role)"))
    target = pending.next_path if pending.purpose == "console" else "/enrol"
    response = RedirectResponse(target, status_code=303)
    console.set_session_cookie(response, cookie)
    return response


async def logout(request: Request) -> Response:
    console = console_of(request)
    session: ConsoleSession = request.state.session
    await console.sessions.end(session)
    await console.audit.write(session.who, "signed out")
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


async def switch_language(request: Request) -> Response:
    code = request.path_params["code"]
    response = RedirectResponse(safe_next(request.query_params.get("next")), status_code=303)
    if code in i18n.LANGUAGES:
        response.set_cookie(i18n.COOKIE, code, max_age=365 * 86400, samesite="lax", httponly=True)
    return response


# -- the app -------------------------------------------------------------------------------------


def _templates() -> Jinja2Templates:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("service.console", "templates"),
        autoescape=True,
    )
    environment.filters["when"] = _when
    return Jinja2Templates(env=environment)


def _when(epoch: float | str | None) -> str:
    import datetime as dt

    if epoch in (None, ""):
        return "–"
    return dt.datetime.fromtimestamp(float(epoch), dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class _Headers:
    """Security headers on every console answer (pure ASGI: streaming answers keep streaming)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def sending(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                for name, value in _SECURITY_HEADERS.items():
                    if name.lower().encode() not in present:
                        headers.append((name.lower().encode(), value.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, sending)


async def _error_page(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
    if "console" not in request.app.state._state:
        return HTMLResponse(detail, status_code=status)
    return console_of(request).render(request, "error.html", status=status, detail=detail)


def console_base_url(settings: Settings) -> str:
    if settings.console_base_url:
        return settings.console_base_url.rstrip("/")
    return f"http://{settings.console_host}:{settings.console_port}"


def create_console_app(
    settings: Settings, redis_url: str, *, pages: list[BaseRoute] | None = None
) -> Starlette:
    from service.console import routes

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        from service.starface.rest import open_http

        redis = connect_worker(redis_url)
        http = open_http(settings.extra_ca_file)
        base_url = console_base_url(settings)
        console = Console(
            settings=settings,
            redis=redis,
            http=http,
            base_url=base_url,
            sessions=SessionStore(
                redis, CookieSigner(reveal(settings.secret_key) or ""), settings.console_idle_minutes * 60
            ),
            signin=MicrosoftSignIn(redis, settings, f"{base_url}/auth/callback"),
            audit=AuditLog(redis),
            templates=_templates(),
        )
        app.state.console = console
        try:
            yield
        finally:
            for task in list(console.background):
                task.cancel()
            await http.close()
            await redis.aclose()

    static = StaticFiles(packages=[("service.console", "static")])
    all_routes: list[BaseRoute] = [
        Route("/login", login_page, methods=["GET", "POST"]),
        Route("/auth/microsoft", microsoft_start),
        Route("/auth/callback", microsoft_callback, methods=["GET", "POST"]),
        Route("/logout", guarded(logout, admin=False), methods=["POST"]),
        Route("/lang/{code}", switch_language),
        Mount("/static", app=static, name="static"),
        *routes.all_routes(),
        *(pages or []),
    ]
    return Starlette(
        routes=all_routes,
        lifespan=lifespan,
        middleware=[Middleware(_Headers)],
        exception_handlers={HTTPException: _error_page, 500: _error_page},
    )
