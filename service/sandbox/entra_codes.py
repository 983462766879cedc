"""The authorization code flow of the Entra stand-in (RFC 6749 section 4.1 with PKCE, RFC 7636).

What Microsoft's "OAuth 2.0 authorization code flow" page documents and the bridge's console sign-in
relies on: ``/authorize`` checks ``client_id``, ``redirect_uri`` (registered, exact; for a loopback
``http`` URI the port is ignored, as Entra does for native and local apps), ``response_type=code``
and, when a ``code_challenge`` is given, only ``S256``; the code lives 10 minutes and is redeemed
once; the token request must repeat the ``redirect_uri`` and send the PKCE ``code_verifier``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

from service.sandbox.clock import Clock
from service.sandbox.entra_model import AppRegistration, OAuthError

CODE_LIFETIME = 600


@dataclass(frozen=True)
class AuthorizationRequest:
    """A checked ``/authorize`` request, carried through the sign-in page."""

    client_id: str
    redirect_uri: str
    scope: str
    state: str
    nonce: str
    code_challenge: str
    code_challenge_method: str
    response_mode: str = "query"


@dataclass(frozen=True)
class IssuedCode:
    request: AuthorizationRequest
    user_id: str
    expires_at: float


def _without_port(uri: str) -> str:
    parts = urlsplit(uri)
    return parts._replace(netloc=parts.hostname or "").geturl()


def redirect_allowed(app: AppRegistration, uri: str) -> bool:
    if uri in app.redirect_uris:
        return True
    parts = urlsplit(uri)
    if parts.scheme != "http" or parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        return False
    return _without_port(uri) in {_without_port(u) for u in app.redirect_uris}


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


class AuthorizationCodes:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._codes: dict[str, IssuedCode] = {}

    def check_request(self, app: AppRegistration, params: dict[str, str]) -> AuthorizationRequest:
        """Raise ``OAuthError`` for a request Entra would refuse before showing a sign-in page."""
        redirect_uri = params.get("redirect_uri", "")
        if not redirect_allowed(app, redirect_uri):
            raise OAuthError(
                400,
                "invalid_request",
                50011,
                f"The redirect URI '{redirect_uri}' specified in the request does not match the redirect "
                f"URIs configured for the application '{app.client_id}'.",
            )
        if params.get("response_type") != "code":
            raise OAuthError(
                400, "unsupported_response_type", 700054, "response_type 'code' is required here."
            )
        response_mode = params.get("response_mode", "query")
        if response_mode not in ("query", "form_post"):
            raise OAuthError(
                400, "invalid_request", 900144, f"response_mode '{response_mode}' is not supported."
            )
        method = params.get("code_challenge_method", "plain" if params.get("code_challenge") else "")
        if params.get("code_challenge") and method != "S256":
            raise OAuthError(400, "invalid_request", 501491, "Invalid code_challenge_method: use S256.")
        return AuthorizationRequest(
            client_id=app.client_id,
            redirect_uri=redirect_uri,
            scope=params.get("scope", ""),
            state=params.get("state", ""),
            nonce=params.get("nonce", ""),
            code_challenge=params.get("code_challenge", ""),
            code_challenge_method=method,
            response_mode=response_mode,
        )

    def issue(self, request: AuthorizationRequest, user_id: str) -> str:
        now = self.clock.now()
        for code in [c for c, issued in self._codes.items() if issued.expires_at < now]:
            del self._codes[code]
        code = secrets.token_urlsafe(48)
        self._codes[code] = IssuedCode(request, user_id, now + CODE_LIFETIME)
        return code

    def redeem(self, app: AppRegistration, form: dict[str, str]) -> IssuedCode:
        """The code's grant, once; raises ``OAuthError`` as Entra's token endpoint does."""
        issued = self._codes.pop(form.get("code", ""), None)
        expired = issued is None or issued.expires_at < self.clock.now()
        if issued is None or expired or issued.request.client_id != app.client_id:
            raise OAuthError(
                400,
                "invalid_grant",
                70008,
                "The provided authorization code or refresh token has expired due to inactivity, or "
                "was already redeemed.",
            )
        if form.get("redirect_uri", "") != issued.request.redirect_uri:
            raise OAuthError(
                400,
                "invalid_grant",
                70002,
                "The reply URL of the token request does not match the one of the authorization request.",
            )
        challenge = issued.request.code_challenge
        if challenge:
            verifier = form.get("code_verifier", "")
            if not verifier or not hmac.compare_digest(s256(verifier), challenge):
                raise OAuthError(
                    400, "invalid_grant", 501481, "The Code_Verifier does not match the code_challenge."
                )
        return issued
