"""The sign-in routes: break-glass form, Microsoft redirect and callback, sign-out, language."""

from __future__ import annotations

import hmac
import logging
import secrets
import urllib.parse

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from service.console import i18n
from service.console.context import LOGIN_CSRF_COOKIE, console_of, read_form, safe_next, text_field
from service.console.sessions import COOKIE, LOCAL, MICROSOFT, ConsoleSession
from service.console.signin import SignInError
from service.core.passwords import verify_password
from service.core.settings import reveal

log = logging.getLogger(__name__)


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
