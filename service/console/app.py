"""The console's Starlette app: the resources its lifespan owns, its routes, headers and error pages.

Nothing here is mounted on the public webhook app, so the public port answers 404 for every
console path.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import jinja2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from service.console import enrol, routes
from service.console.audit import AuditLog
from service.console.context import Console, console_of, guarded
from service.console.sessions import CookieSigner, SessionStore
from service.console.signin import MicrosoftSignIn
from service.console.signin_pages import (
    login_page,
    logout,
    microsoft_callback,
    microsoft_start,
    switch_language,
)
from service.console.users import UserTable
from service.core.secretbox import SecretBox
from service.core.settings import Settings, reveal
from service.core.storage import connect_worker

_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # The sign-in callback carries an authorization code: never hand a console URL on as a referrer.
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _templates() -> Jinja2Templates:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("service.console", "templates"),
        autoescape=True,
    )
    environment.filters["when"] = _when
    return Jinja2Templates(env=environment)


def _when(epoch: float | str | None) -> str:
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
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        from service.starface.rest import open_http

        redis = connect_worker(redis_url)
        http = open_http(settings.extra_ca_file)
        base_url = console_base_url(settings)
        box = SecretBox.from_settings(settings)
        console = Console(
            settings=settings,
            redis=redis,
            http=http,
            base_url=base_url,
            sessions=SessionStore(
                redis, CookieSigner(reveal(settings.secret_key) or ""), settings.console_idle_minutes * 60
            ),
            signin=MicrosoftSignIn(redis, settings, box, f"{base_url}/auth/callback"),
            audit=AuditLog(redis),
            templates=_templates(),
            users=UserTable(redis),
            box=box,
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
        *enrol.routes(),
        *(pages or []),
    ]
    return Starlette(
        routes=all_routes,
        lifespan=lifespan,
        middleware=[Middleware(_Headers)],
        exception_handlers={HTTPException: _error_page, 500: _error_page},
    )
