"""What every console page reads (``Console``) and the guard every page passes.

Every page but sign-in, the static files and ``/enrol``'s start needs a session; every page but
``/enrol`` needs the console role; every POST needs the session's CSRF token.
"""

from __future__ import annotations

import hmac
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.templating import Jinja2Templates

from service.console import i18n
from service.console.audit import AuditLog
from service.console.sessions import COOKIE, ConsoleSession, SessionStore
from service.console.signin import MicrosoftSignIn
from service.console.users import UserTable
from service.core.secretbox import SecretBox
from service.core.settings import Settings

# Forms are small; the largest is a credentials CSV (at most 4 MiB, as the CLI accepts).
MAX_FORM_BYTES = 5 * 1024 * 1024
LOGIN_CSRF_COOKIE = "pb_login_csrf"
Handler = Callable[[Request], Awaitable[Response]]


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
    users: UserTable
    # Built once: every page that reads or writes a sealed value uses this box.
    box: SecretBox
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
