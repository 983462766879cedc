"""The HTTP face of the Entra stand-in: OpenID metadata, JWKS, token and device code endpoints."""

from __future__ import annotations

import base64
import hmac
import html
import uuid
from collections.abc import Callable
from urllib.parse import parse_qsl, unquote_plus, urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from service.sandbox.entra import EntraTenant
from service.sandbox.entra_model import (
    TOKEN_BODY_LIMIT,
    OAuthError,
)
from service.web.body import read_bounded

# ---- HTTP ------------------------------------------------------------------------------------


def _form(body: bytes) -> dict[str, str]:
    return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))


def _basic_auth(request: Request) -> tuple[str, str] | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value, validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    if not sep:
        return None
    return unquote_plus(user), unquote_plus(password)


def entra_routes(tenant: EntraTenant, base_url: Callable[[], str]) -> list[Route]:
    """Starlette routes for the tenant; ``base_url`` is read per request (the port is known late)."""

    def oauth_error(exc: OAuthError, request: Request) -> JSONResponse:
        correlation = request.headers.get("client-request-id") or str(uuid.uuid4())
        body = exc.body(tenant.clock.utcnow(), correlation, base_url())
        headers = {"WWW-Authenticate": 'Basic realm="sandbox"'} if exc.status == 401 else None
        return JSONResponse(body, status_code=exc.status, headers=headers)

    def unknown_tenant(segment: str) -> JSONResponse:
        error = OAuthError(
            400,
            "invalid_tenant",
            90002,
            f"Tenant '{segment}' not found. Check to make sure you have the correct tenant ID and are "
            "signing into the correct cloud.",
        )
        return JSONResponse(error.body(tenant.clock.utcnow(), str(uuid.uuid4()), base_url()), 400)

    async def metadata_v2(request: Request) -> Response:
        segment = request.path_params["tenant"]
        if not tenant.knows_tenant(segment):
            return unknown_tenant(segment)
        return JSONResponse(tenant.openid_configuration(base_url(), segment, "v2"))

    async def metadata_v1(request: Request) -> Response:
        segment = request.path_params["tenant"]
        if not tenant.knows_tenant(segment):
            return unknown_tenant(segment)
        return JSONResponse(tenant.openid_configuration(base_url(), segment, "v1"))

    async def keys(request: Request) -> Response:
        segment = request.path_params["tenant"]
        if not tenant.knows_tenant(segment):
            return unknown_tenant(segment)
        return JSONResponse(tenant.jwks())

    async def user_realm(request: Request) -> Response:
        return JSONResponse(tenant.user_realm(request.path_params["username"]))

    async def token(request: Request) -> Response:
        segment = request.path_params["tenant"]
        if not tenant.knows_tenant(segment):
            return unknown_tenant(segment)
        form = _form(await read_bounded(request, TOKEN_BODY_LIMIT))
        try:
            result = tenant.token(form, _basic_auth(request))
        except OAuthError as exc:
            return oauth_error(exc, request)
        return JSONResponse(result, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

    async def devicecode(request: Request) -> Response:
        segment = request.path_params["tenant"]
        if not tenant.knows_tenant(segment):
            return unknown_tenant(segment)
        form = _form(await read_bounded(request, TOKEN_BODY_LIMIT))
        try:
            return JSONResponse(tenant.device_authorization(form, base_url()))
        except OAuthError as exc:
            return oauth_error(exc, request)

    async def device_login(request: Request) -> Response:
        # The page a person opens from the device-code message: code plus password sign-in.
        message = ""
        if request.method == "POST":
            form = _form(await read_bounded(request, TOKEN_BODY_LIMIT))
            account = tenant.find_account(form.get("username", ""))
            password = form.get("password", "")
            valid = (
                account is not None
                and account.password is not None
                and hmac.compare_digest(account.password.encode(), password.encode())
            )
            if not valid or account is None:
                message = "Sign-in failed: unknown user or wrong password."
            else:
                try:
                    tenant.approve_device_code(form.get("user_code", ""), account.id)
                    message = "Signed in. You can close this page and return to the device."
                except KeyError:
                    message = "That code is unknown or expired."
        return HTMLResponse(_DEVICE_PAGE.format(message=html.escape(message)))

    async def authorize(request: Request) -> Response:
        # GET shows the sign-in page for a checked request; POST signs in and redirects with a code.
        segment = request.path_params["tenant"]
        if not tenant.knows_tenant(segment):
            return unknown_tenant(segment)
        if request.method == "GET":
            params = dict(request.query_params)
        else:
            params = _form(await read_bounded(request, TOKEN_BODY_LIMIT))
        try:
            checked = tenant.authorization_request(params)
        except OAuthError as exc:
            # Entra shows an error page instead of redirecting to an unchecked redirect_uri.
            return HTMLResponse(_ERROR_PAGE.format(message=html.escape(str(exc))), exc.status)
        message = ""
        if request.method == "POST":
            code = tenant.sign_in_for_code(checked, params.get("username", ""), params.get("password", ""))
            if code is not None:
                answer = {"code": code, "state": checked.state, "session_state": str(uuid.uuid4())}
                if checked.response_mode == "form_post":
                    # As Entra does: a page whose form posts the answer to the redirect URI.
                    fields = "".join(
                        f'<input type="hidden" name="{k}" value="{html.escape(v)}">'
                        for k, v in answer.items()
                    )
                    page = _FORM_POST_PAGE.format(action=html.escape(checked.redirect_uri), fields=fields)
                    return HTMLResponse(page)
                return RedirectResponse(f"{checked.redirect_uri}?{urlencode(answer)}", status_code=302)
            message = "Sign-in failed: unknown user or wrong password."
        hidden = "".join(
            f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
            for k, v in params.items()
            if k not in ("username", "password")
        )
        return HTMLResponse(_SIGN_IN_PAGE.format(message=html.escape(message), hidden=hidden))

    return [
        Route("/{tenant}/oauth2/v2.0/authorize", authorize, methods=["GET", "POST"]),
        Route("/{tenant}/v2.0/.well-known/openid-configuration", metadata_v2),
        Route("/{tenant}/.well-known/openid-configuration", metadata_v1),
        Route("/{tenant}/discovery/v2.0/keys", keys),
        Route("/{tenant}/discovery/keys", keys),
        Route("/common/userrealm/{username}", user_realm),
        Route("/{tenant}/oauth2/v2.0/token", token, methods=["POST"]),
        Route("/{tenant}/oauth2/v2.0/devicecode", devicecode, methods=["POST"]),
        Route("/devicelogin", device_login, methods=["GET", "POST"]),
    ]


_DEVICE_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Sandbox device sign-in</title></head>
<body><h1>Enter code</h1><p>{message}</p>
<form method="post"><label>Code <input name="user_code" autocomplete="off"></label><br>
<label>User <input name="username"></label><br>
<label>Password <input name="password" type="password"></label><br>
<button type="submit">Sign in</button></form></body></html>
"""

_SIGN_IN_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Sandbox sign-in</title></head>
<body><h1>Sign in</h1><p id="message">{message}</p>
<form method="post">{hidden}
<label>User <input name="username" autocomplete="username"></label><br>
<label>Password <input name="password" type="password" autocomplete="current-password"></label><br>
<button type="submit">Sign in</button></form></body></html>
"""

_ERROR_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Sandbox sign-in error</title></head>
<body><h1>Sorry, but we're having trouble signing you in.</h1><p>{message}</p></body></html>
"""

_FORM_POST_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Working...</title></head>
<body onload="document.forms[0].submit()"><form method="post" action="{action}">{fields}
<noscript><button type="submit">Continue</button></noscript></form></body></html>
"""
