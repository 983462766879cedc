"""What an Entra tenant holds: signing keys, app registrations, accounts, grants, and OAuth errors."""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

GRAPH_RESOURCE = "https://graph.microsoft.com"
GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
CHANGE_TRACKING_APP_ID = "0bf30f3b-4a52-48df-9a82-234910c4a086"
# Tokens name the real issuers: a validator written for Entra then works unchanged here.
V2_ISSUER = "https://login.microsoftonline.com/{tid}/v2.0"
V1_ISSUER = "https://sts.windows.net/{tid}/"
OIDC_SCOPES = frozenset({"openid", "profile", "offline_access", "email"})
DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"

# Graph delegated permissions and application roles the sandbox knows about.
DELEGATED_PERMISSIONS = frozenset(
    {
        "Presence.Read",
        "Presence.Read.All",
        "Presence.ReadWrite",
        "User.Read",
        "User.ReadBasic.All",
        "User.Read.All",
    }
)
APPLICATION_PERMISSIONS = frozenset({"Presence.Read.All", "Presence.ReadWrite.All", "User.Read.All"})

TOKEN_BODY_LIMIT = 64 * 1024
JSON_BODY_LIMIT = 1024 * 1024


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _int_b64url(number: int) -> str:
    return b64url(number.to_bytes((number.bit_length() + 7) // 8, "big"))


class SigningKey:
    """An RS256 key with a self-signed certificate, published in the JWKS like Entra's keys."""

    def __init__(self, private_key: rsa.RSAPrivateKey | None = None) -> None:
        self.private_key = private_key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
        now = dt.datetime.now(dt.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "accounts.sandbox.invalid")])
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.private_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=365))
            .sign(self.private_key, hashes.SHA256())
        )
        # Entra's kid and x5t are both the base64url SHA-1 thumbprint of the key's certificate.
        self.kid = b64url(self.certificate.fingerprint(hashes.SHA1()))  # noqa: S303

    def jwk(self, issuer: str) -> dict[str, Any]:
        numbers = self.private_key.public_key().public_numbers()
        der = self.certificate.public_bytes(serialization.Encoding.DER)
        return {
            "kty": "RSA",
            "use": "sig",
            "kid": self.kid,
            "x5t": self.kid,
            "n": _int_b64url(numbers.n),
            "e": _int_b64url(numbers.e),
            "x5c": [base64.b64encode(der).decode()],
            "issuer": issuer,
        }

    def sign(self, claims: dict[str, Any]) -> str:
        return jwt.encode(
            claims, self.private_key, algorithm="RS256", headers={"kid": self.kid, "x5t": self.kid}
        )


@dataclass
class AppRegistration:
    client_id: str
    display_name: str
    client_secret: str | None = field(default=None, repr=False)
    # Application permissions with admin consent: they become the ``roles`` of app-only tokens.
    application_permissions: set[str] = field(default_factory=set)
    # Delegated permissions with tenant-wide admin consent.
    delegated_permissions: set[str] = field(default_factory=set)
    public_client: bool = True
    service_principal_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    # Web redirect URIs for the authorization code flow (the bridge's console sign-in).
    redirect_uris: set[str] = field(default_factory=set)

    def public(self) -> dict[str, Any]:
        return {
            "clientId": self.client_id,
            "displayName": self.display_name,
            "hasSecret": self.client_secret is not None,
            "applicationPermissions": sorted(self.application_permissions),
            "delegatedPermissions": sorted(self.delegated_permissions),
            "publicClient": self.public_client,
            "servicePrincipalId": self.service_principal_id,
        }


@dataclass
class Account:
    id: str
    user_principal_name: str
    display_name: str
    mail: str | None
    given_name: str | None = None
    # Entra's proxyAddresses: "SMTP:primary@…" and "smtp:alias@…" entries.
    proxy_addresses: tuple[str, ...] = ()
    surname: str | None = None
    job_title: str | None = None
    password: str | None = field(default=None, repr=False)
    mfa_required: bool = False
    # Like Entra's refreshTokensValidFromDateTime: refresh tokens issued before it are revoked.
    tokens_valid_from: float = 0.0
    # App roles assigned to the user (the id token's ``roles`` claim) and group object ids (the
    # ``groups`` claim, present when the app registration asks for group claims).
    app_roles: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()

    def graph_json(self) -> dict[str, Any]:
        return {
            "businessPhones": [],
            "displayName": self.display_name,
            "givenName": self.given_name,
            "jobTitle": self.job_title,
            "mail": self.mail,
            "mobilePhone": None,
            "officeLocation": None,
            "preferredLanguage": None,
            "surname": self.surname,
            "userPrincipalName": self.user_principal_name,
            "proxyAddresses": list(self.proxy_addresses),
            "id": self.id,
        }


@dataclass
class RefreshGrant:
    user_id: str
    client_id: str
    issued_at: float
    mfa_done: bool
    last_used: float


@dataclass
class DeviceAuthorization:
    device_code: str
    user_code: str
    client_id: str
    scopes: list[str]
    expires_at: float
    approved_by: str | None = None
    declined: bool = False
    redeemed: bool = False


@dataclass(frozen=True)
class AccessContext:
    """Who is calling Graph, read from a verified access token."""

    app_id: str
    tenant_id: str
    user_id: str | None
    scopes: frozenset[str]
    roles: frozenset[str]
    issued_at: float
    expires_at: float

    @property
    def app_only(self) -> bool:
        return self.user_id is None


class OAuthError(Exception):
    """An Entra token-endpoint error; the HTTP layer renders it with trace ids and a timestamp."""

    def __init__(
        self,
        status: int,
        error: str,
        code: int,
        text: str,
        *,
        suberror: str | None = None,
        claims: str | None = None,
    ) -> None:
        super().__init__(f"AADSTS{code}: {text}")
        self.status = status
        self.error = error
        self.code = code
        self.text = text
        self.suberror = suberror
        self.claims = claims

    def body(self, now: dt.datetime, correlation_id: str, error_uri_base: str) -> dict[str, Any]:
        trace_id = str(uuid.uuid4())
        stamp = now.strftime("%Y-%m-%d %H:%M:%SZ")
        result: dict[str, Any] = {
            "error": self.error,
            "error_description": (
                f"AADSTS{self.code}: {self.text} Trace ID: {trace_id} "
                f"Correlation ID: {correlation_id} Timestamp: {stamp}"
            ),
            "error_codes": [self.code],
            "timestamp": stamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": f"{error_uri_base}/error?code={self.code}",
        }
        if self.suberror is not None:
            result["suberror"] = self.suberror
        if self.claims is not None:
            result["claims"] = self.claims
        return result


class TokenRejected(Exception):
    """A bearer token Graph does not accept; the message is Graph's wording for the 401."""


def _mfa_error() -> OAuthError:
    claims = json.dumps({"access_token": {"capolids": {"essential": True, "values": [str(uuid.uuid4())]}}})
    return OAuthError(
        400,
        "invalid_grant",
        50076,
        "Due to a configuration change made by your administrator, or because you moved to a new "
        f"location, you must use multi-factor authentication to access '{GRAPH_APP_ID}'.",
        suberror="basic_action",
        claims=claims,
    )


def _consent_error(app: AppRegistration) -> OAuthError:
    return OAuthError(
        400,
        "invalid_grant",
        65001,
        f"The user or administrator has not consented to use the application with ID "
        f"'{app.client_id}' named '{app.display_name}'. Send an interactive authorization request "
        "for this user and resource.",
        suberror="consent_required",
    )


@dataclass(frozen=True)
class _ScopeRequest:
    graph: frozenset[str]
    default: bool
    oidc: frozenset[str]


def _secret_required() -> OAuthError:
    """A confidential grant (client credentials, a web app's code) sent without the client's secret."""
    return OAuthError(
        401,
        "invalid_client",
        7000218,
        "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
    )
