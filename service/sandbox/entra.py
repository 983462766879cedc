"""Entra ID stand-in: one tenant, its app registrations and accounts, and the OAuth 2.0 endpoints.

MSAL Python talks to it unmodified: OpenID metadata, a JWKS, the v2.0 token endpoint (client
credentials, username/password, device code, refresh token) and the device authorization endpoint.
Errors carry Entra's JSON shape (``error``, ``error_description`` starting ``AADSTSnnnnn:``,
``error_codes``, ``timestamp``, ``trace_id``, ``correlation_id``, ``error_uri``, ``suberror``, ``claims``)
so code that branches on them is exercised as it would be against the real service.

Access tokens for Microsoft Graph are v1.0 JWTs as Graph receives them (``iss`` sts.windows.net,
``aud`` https://graph.microsoft.com, ``appid``, ``scp`` or ``roles``).  Token lifetimes follow the
controllable clock, so an advanced clock expires tokens exactly as time would.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import secrets
import string
from collections.abc import Callable, Iterable
from typing import Any

from service.sandbox.clock import Clock
from service.sandbox.entra_codes import AuthorizationCodes, AuthorizationRequest
from service.sandbox.entra_model import (
    APPLICATION_PERMISSIONS,
    DELEGATED_PERMISSIONS,
    DEVICE_CODE_GRANT,
    GRAPH_APP_ID,
    GRAPH_RESOURCE,
    OIDC_SCOPES,
    V1_ISSUER,
    V2_ISSUER,
    DeviceAuthorization,
    RefreshGrant,
    _consent_error,
    _mfa_error,
    _ScopeRequest,
    _secret_required,
    b64url,
)
from service.sandbox.entra_model import (
    JSON_BODY_LIMIT as JSON_BODY_LIMIT,
)
from service.sandbox.entra_model import (
    AccessContext as AccessContext,
)
from service.sandbox.entra_model import (
    Account as Account,
)
from service.sandbox.entra_model import (
    AppRegistration as AppRegistration,
)
from service.sandbox.entra_model import (
    OAuthError as OAuthError,
)
from service.sandbox.entra_model import (
    SigningKey as SigningKey,
)
from service.sandbox.entra_model import (
    TokenRejected as TokenRejected,
)
from service.sandbox.entra_tokens import TenantSigning, pairwise


class EntraTenant:
    """One directory: apps, accounts, consent, refresh tokens, device codes and signing keys."""

    def __init__(
        self,
        clock: Clock,
        *,
        tenant_id: str,
        domain: str,
        signing_key: SigningKey | None = None,
        access_token_lifetime: int = 3599,
        refresh_token_inactivity: int = 90 * 24 * 3600,
        device_code_lifetime: int = 900,
        device_code_interval: int = 5,
        validation_token_lifetime: int = 3600,
    ) -> None:
        self.clock = clock
        self.tenant_id = tenant_id
        self.domain = domain
        self.signing = TenantSigning(
            clock,
            tenant_id,
            signing_key,
            access_token_lifetime=access_token_lifetime,
            validation_token_lifetime=validation_token_lifetime,
        )
        self.refresh_token_inactivity = refresh_token_inactivity
        self.device_code_lifetime = device_code_lifetime
        self.device_code_interval = device_code_interval
        self.apps: dict[str, AppRegistration] = {}
        self.accounts: dict[str, Account] = {}
        # (client_id, user_id) pairs whose delegated consent was revoked; user_id None = everyone.
        self.revoked_consent: set[tuple[str, str | None]] = set()
        self._refresh: dict[str, RefreshGrant] = {}
        self._devices: dict[str, DeviceAuthorization] = {}
        self.codes = AuthorizationCodes(clock)
        # Subscribers to "this user's (or app's) authorization was withdrawn".
        self.revocation_listeners: list[Callable[[str | None, str | None], None]] = []

    # ---- directory -------------------------------------------------------------------------

    @property
    def access_token_lifetime(self) -> int:
        return self.signing.access_token_lifetime

    @property
    def keys(self) -> list[SigningKey]:
        return self.signing.keys

    @property
    def active_key(self) -> SigningKey:
        return self.signing.active

    def rotate_signing_key(self) -> SigningKey:
        return self.signing.rotate()

    def verify_access_token(self, token: str, *, leeway: float = 300) -> AccessContext:
        """Check a Graph bearer token against the sandbox keys and clock; raise ``TokenRejected``."""
        return self.signing.verify(token, known_app=self.apps.__contains__, leeway=leeway)

    def validation_token(self, app_id: str, version: str = "v2") -> str:
        return self.signing.validation_token(app_id, version)

    def add_app(self, app: AppRegistration) -> AppRegistration:
        if app.client_id in self.apps:
            raise ValueError(f"app {app.client_id} already exists")
        unknown = (app.application_permissions - APPLICATION_PERMISSIONS) | (
            app.delegated_permissions - DELEGATED_PERMISSIONS
        )
        if unknown:
            raise ValueError(f"unknown permissions: {', '.join(sorted(unknown))}")
        self.apps[app.client_id] = app
        return app

    def add_account(self, account: Account) -> Account:
        if account.id in self.accounts:
            raise ValueError(f"user id {account.id} already exists")
        if self.find_account(account.user_principal_name) is not None:
            raise ValueError(f"userPrincipalName {account.user_principal_name} already exists")
        self.accounts[account.id] = account
        return account

    def find_account(self, id_or_upn: str) -> Account | None:
        if id_or_upn in self.accounts:
            return self.accounts[id_or_upn]
        lowered = id_or_upn.lower()
        for account in self.accounts.values():
            if account.user_principal_name.lower() == lowered:
                return account
        return None

    def knows_tenant(self, segment: str) -> bool:
        return segment.lower() in {self.tenant_id, self.domain.lower(), "common", "organizations"}

    # ---- revocation --------------------------------------------------------------------------

    def revoke_sessions(self, user_id: str) -> None:
        """Invalidate every refresh token of the user, as ``revokeSignInSessions`` does."""
        account = self.accounts[user_id]
        account.tokens_valid_from = self.clock.now()
        for listener in self.revocation_listeners:
            listener(None, user_id)

    def revoke_consent(self, client_id: str, user_id: str | None = None) -> None:
        if client_id not in self.apps:
            raise KeyError(client_id)
        self.revoked_consent.add((client_id, user_id))
        for listener in self.revocation_listeners:
            listener(client_id, user_id)

    def grant_consent(self, client_id: str, user_id: str | None = None) -> None:
        if user_id is None:
            self.revoked_consent = {pair for pair in self.revoked_consent if pair[0] != client_id}
        else:
            self.revoked_consent.discard((client_id, user_id))

    def has_consent(self, client_id: str, user_id: str) -> bool:
        return (client_id, None) not in self.revoked_consent and (
            client_id,
            user_id,
        ) not in self.revoked_consent

    # ---- metadata ----------------------------------------------------------------------------

    def openid_configuration(self, base_url: str, segment: str, version: str) -> dict[str, Any]:
        tenant_path = f"{base_url}/{segment}"
        is_common = segment.lower() in ("common", "organizations")
        tid = "{tenantid}" if is_common else self.tenant_id
        if version == "v1":
            # Trimmed v1 document: only what a token validator reads (issuer and keys).
            return {
                "issuer": V1_ISSUER.format(tid=tid),
                "jwks_uri": f"{base_url}/common/discovery/keys",
                "id_token_signing_alg_values_supported": ["RS256"],
                "tenant_region_scope": "EU",
            }
        return {
            "token_endpoint": f"{tenant_path}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
            "jwks_uri": f"{tenant_path}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": V2_ISSUER.format(tid=tid),
            "request_uri_parameter_supported": False,
            "userinfo_endpoint": "https://graph.microsoft.com/oidc/userinfo",
            "authorization_endpoint": f"{tenant_path}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{tenant_path}/oauth2/v2.0/devicecode",
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "end_session_endpoint": f"{tenant_path}/oauth2/v2.0/logout",
            "claims_supported": [
                "sub",
                "iss",
                "aud",
                "exp",
                "iat",
                "auth_time",
                "acr",
                "nonce",
                "preferred_username",
                "name",
                "tid",
                "ver",
                "email",
            ],
            "tenant_region_scope": "EU",
            "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": "graph.microsoft.com",
        }

    def jwks(self) -> dict[str, Any]:
        return self.signing.jwks()

    def user_realm(self, username: str) -> dict[str, Any]:
        _, _, domain = username.rpartition("@")
        managed = domain.lower() == self.domain.lower() or self.find_account(username) is not None
        return {
            "ver": "1.0",
            "account_type": "Managed" if managed else "Unknown",
            "domain_name": domain,
            "cloud_instance_name": "microsoftonline.com",
            "cloud_audience_urn": "urn:federation:MicrosoftOnline",
        }

    # ---- token endpoint ----------------------------------------------------------------------

    def token(self, form: dict[str, str], basic_auth: tuple[str, str] | None) -> dict[str, Any]:
        """Run one token request; raises ``OAuthError`` exactly where Entra answers with an error."""
        grant_type = form.get("grant_type", "")
        if not grant_type:
            raise OAuthError(
                400,
                "invalid_request",
                900144,
                "The request body must contain the following parameter: 'grant_type'.",
            )
        client_id = basic_auth[0] if basic_auth else form.get("client_id", "")
        secret = basic_auth[1] if basic_auth else form.get("client_secret")
        app = self._client(client_id)
        confidential = self._authenticate_client(app, secret)
        if grant_type == "client_credentials":
            if not confidential:
                raise _secret_required()
            return self._client_credentials(app, form.get("scope", ""))
        if not confidential and not app.public_client:
            raise _secret_required()
        if grant_type == "password":
            return self._password(app, form)
        if grant_type == DEVICE_CODE_GRANT:
            return self._device_code(app, form)
        if grant_type == "refresh_token":
            return self._refresh_token(app, form)
        if grant_type == "authorization_code":
            return self._authorization_code(app, form, confidential=confidential)
        raise OAuthError(
            400,
            "unsupported_grant_type",
            70003,
            f"The app requested an unsupported grant type '{grant_type}'.",
        )

    def authorization_request(self, params: dict[str, str]) -> AuthorizationRequest:
        """Check an ``/authorize`` request; raises ``OAuthError`` where Entra shows an error page."""
        return self.codes.check_request(self._client(params.get("client_id", "")), params)

    def sign_in_for_code(self, request: AuthorizationRequest, username: str, password: str) -> str | None:
        """The sign-in page's answer: a code for the redirect, or ``None`` for a failed sign-in."""
        account = self.find_account(username)
        if account is None or account.password is None:
            return None
        if not hmac.compare_digest(account.password.encode(), password.encode()):
            return None
        return self.codes.issue(request, account.id)

    def _authorization_code(
        self, app: AppRegistration, form: dict[str, str], *, confidential: bool
    ) -> dict[str, Any]:
        if not confidential:
            # The bridge registers a web redirect URI: Entra then requires the client's secret.
            raise _secret_required()
        issued = self.codes.redeem(app, form)
        account = self.accounts.get(issued.user_id)
        if account is None:
            raise OAuthError(400, "invalid_grant", 50034, "The user account does not exist in the directory.")
        request = self._parse_scopes(issued.request.scope.split())
        extra = {"nonce": issued.request.nonce, "client_info": form.get("client_info", "")}
        return self._user_tokens(app, account, request, extra, mfa_done=False)

    def device_authorization(self, form: dict[str, str], base_url: str) -> dict[str, Any]:
        app = self._client(form.get("client_id", ""))
        if not app.public_client:
            raise OAuthError(
                400,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or "
                "'client_secret'.",
            )
        scopes = form.get("scope", "").split()
        self._parse_scopes(scopes)
        alphabet = string.ascii_uppercase + string.digits
        user_code = "".join(secrets.choice(alphabet) for _ in range(9))
        device_code = secrets.token_urlsafe(48)
        self._prune_devices()
        self._devices[device_code] = DeviceAuthorization(
            device_code=device_code,
            user_code=user_code,
            client_id=app.client_id,
            scopes=scopes,
            expires_at=self.clock.now() + self.device_code_lifetime,
        )
        uri = f"{base_url}/devicelogin"
        return {
            "user_code": user_code,
            "device_code": device_code,
            "verification_uri": uri,
            "expires_in": self.device_code_lifetime,
            "interval": self.device_code_interval,
            "message": (
                f"To sign in, use a web browser to open the page {uri} and enter the code "
                f"{user_code} to authenticate."
            ),
        }

    def approve_device_code(self, user_code: str, user_id: str) -> DeviceAuthorization:
        device = self._pending_device(user_code)
        if user_id not in self.accounts:
            raise KeyError(user_id)
        device.approved_by = user_id
        return device

    def decline_device_code(self, user_code: str) -> DeviceAuthorization:
        device = self._pending_device(user_code)
        device.declined = True
        return device

    def _pending_device(self, user_code: str) -> DeviceAuthorization:
        now = self.clock.now()
        for device in self._devices.values():
            if (
                hmac.compare_digest(device.user_code, user_code.strip().upper())
                and not device.redeemed
                and device.expires_at > now
            ):
                return device
        raise KeyError(user_code)

    def _prune_devices(self) -> None:
        now = self.clock.now()
        for code in [c for c, d in self._devices.items() if d.expires_at + 3600 < now]:
            del self._devices[code]

    def _client(self, client_id: str) -> AppRegistration:
        if not client_id:
            raise OAuthError(
                400,
                "invalid_request",
                900144,
                "The request body must contain the following parameter: 'client_id'.",
            )
        app = self.apps.get(client_id)
        if app is None:
            raise OAuthError(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory "
                f"'{self.domain}'. This can happen if the application has not been installed by the "
                "administrator of the tenant or consented to by any user in the tenant.",
            )
        return app

    @staticmethod
    def _authenticate_client(app: AppRegistration, secret: str | None) -> bool:
        if secret is None:
            return False
        expected = app.client_secret
        # Compare against something even when the app has no secret, so timing says nothing.
        matches = hmac.compare_digest((expected or "\0").encode(), secret.encode())
        if expected is None or not matches:
            raise OAuthError(
                401,
                "invalid_client",
                7000215,
                "Invalid client secret provided. Ensure the secret being sent in the request is the "
                "client secret value, not the client secret ID, for a secret added to app "
                f"'{app.client_id}'.",
            )
        return True

    def _parse_scopes(self, scopes: Iterable[str]) -> _ScopeRequest:
        graph: set[str] = set()
        oidc: set[str] = set()
        default = False
        for scope in scopes:
            if scope in OIDC_SCOPES:
                oidc.add(scope)
                continue
            resource, slash, name = scope.rpartition("/")
            if slash and resource.rstrip("/") not in (GRAPH_RESOURCE, GRAPH_APP_ID):
                raise OAuthError(
                    400,
                    "invalid_resource",
                    500011,
                    f"The resource principal named {resource} was not found in the tenant named "
                    f"{self.domain}. This can happen if the application has not been installed by the "
                    "administrator of the tenant or consented to by any user in the tenant.",
                )
            if name == ".default":
                default = True
                continue
            matched = next((p for p in DELEGATED_PERMISSIONS if p.lower() == name.lower()), None)
            if matched is None:
                raise OAuthError(
                    400,
                    "invalid_scope",
                    70011,
                    f"The provided value for the input parameter 'scope' is not valid. The scope {scope} "
                    "is not valid.",
                )
            graph.add(matched)
        return _ScopeRequest(frozenset(graph), default, frozenset(oidc))

    def _client_credentials(self, app: AppRegistration, scope: str) -> dict[str, Any]:
        request = self._parse_scopes(scope.split())
        if not request.default or request.graph:
            raise OAuthError(
                400,
                "invalid_scope",
                1002012,
                f"The provided value for scope {scope} is not valid. Client credential flows must have "
                "a scope value with /.default suffixed to the resource identifier "
                "(application ID URI).",
            )
        now = self.clock.now()
        claims = self.signing.access_claims(app, now)
        claims.update(
            {
                "idtyp": "app",
                "oid": app.service_principal_id,
                "sub": app.service_principal_id,
                "roles": sorted(app.application_permissions),
            }
        )
        if not app.application_permissions:
            del claims["roles"]
        return {
            "token_type": "Bearer",
            "expires_in": self.access_token_lifetime,
            "ext_expires_in": self.access_token_lifetime,
            "access_token": self.active_key.sign(claims),
        }

    def _password(self, app: AppRegistration, form: dict[str, str]) -> dict[str, Any]:
        username = form.get("username", "")
        password = form.get("password", "")
        account = self.find_account(username)
        if account is None:
            raise OAuthError(
                400,
                "invalid_grant",
                50034,
                f"The user account {{EUII Hidden}} does not exist in the {self.tenant_id} directory. To "
                "sign into this application, the account must be added to the directory.",
            )
        expected = account.password or ""
        if not (hmac.compare_digest(expected.encode(), password.encode()) and account.password is not None):
            raise OAuthError(
                400,
                "invalid_grant",
                50126,
                "Error validating credentials due to invalid username or password.",
            )
        if account.mfa_required:
            raise _mfa_error()
        request = self._parse_scopes(form.get("scope", "").split())
        return self._user_tokens(app, account, request, form, mfa_done=False)

    def _device_code(self, app: AppRegistration, form: dict[str, str]) -> dict[str, Any]:
        device = self._devices.get(form.get("device_code", ""))
        if device is None or device.client_id != app.client_id or device.redeemed:
            raise OAuthError(
                400,
                "invalid_grant",
                70000,
                "The provided value for the input parameter 'device_code' is not valid.",
            )
        if device.expires_at <= self.clock.now():
            raise OAuthError(
                400,
                "expired_token",
                70020,
                "The provided value for the input parameter "
                "'device_code' is not valid. This device code has expired.",
            )
        if device.declined:
            raise OAuthError(400, "authorization_declined", 70000, "The user declined the authorization.")
        if device.approved_by is None:
            raise OAuthError(
                400,
                "authorization_pending",
                70016,
                "OAuth 2.0 device flow error. Authorization is pending. Continue polling.",
            )
        device.redeemed = True
        account = self.accounts[device.approved_by]
        request = self._parse_scopes(device.scopes)
        # The user signed in interactively, so MFA was satisfied on the way.
        return self._user_tokens(app, account, request, form, mfa_done=True)

    def _refresh_token(self, app: AppRegistration, form: dict[str, str]) -> dict[str, Any]:
        presented = form.get("refresh_token", "")
        grant = self._refresh.get(_digest(presented))
        if grant is None:
            raise OAuthError(
                400, "invalid_grant", 9002313, "Invalid request. Request is malformed or invalid."
            )
        if grant.client_id != app.client_id:
            raise OAuthError(400, "invalid_grant", 70000, "Provided grant is invalid or malformed.")
        now = self.clock.now()
        account = self.accounts[grant.user_id]
        if grant.issued_at < account.tokens_valid_from:
            issued = _iso(grant.issued_at)
            valid_from = _iso(account.tokens_valid_from)
            raise OAuthError(
                400,
                "invalid_grant",
                50173,
                "The provided grant has expired due to it being revoked, a fresh auth token is needed. "
                "The user might have changed or reset their password. The grant was issued on "
                f"'{issued}' and the TokensValidFrom date (before which tokens are not valid) for this "
                f"user is '{valid_from}'.",
            )
        if now - grant.last_used > self.refresh_token_inactivity:
            raise OAuthError(
                400,
                "invalid_grant",
                700082,
                f"The refresh token has expired due to inactivity. The token was issued on "
                f"'{_iso(grant.issued_at)}' and was inactive for "
                f"{self.refresh_token_inactivity // 86400}.00:00:00.",
            )
        if account.mfa_required and not grant.mfa_done:
            raise _mfa_error()
        grant.last_used = now
        request = self._parse_scopes(form.get("scope", "").split())
        return self._user_tokens(app, account, request, form, mfa_done=grant.mfa_done)

    def _user_tokens(
        self,
        app: AppRegistration,
        account: Account,
        request: _ScopeRequest,
        form: dict[str, str],
        *,
        mfa_done: bool,
    ) -> dict[str, Any]:
        consented = app.delegated_permissions
        if not self.has_consent(app.client_id, account.id) or not request.graph <= consented:
            raise _consent_error(app)
        if not request.graph and not request.default and not consented:
            raise _consent_error(app)
        now = self.clock.now()
        # The access token carries every consented permission of the resource, as Entra's does.
        scp = sorted(consented)
        claims = self.signing.access_claims(app, now)
        claims.update(
            {
                "idtyp": "user",
                "oid": account.id,
                "sub": pairwise(account.id, app.client_id),
                "scp": " ".join(scp),
                "upn": account.user_principal_name,
                "unique_name": account.user_principal_name,
                "name": account.display_name,
                "amr": ["pwd", "mfa"] if mfa_done else ["pwd"],
            }
        )
        result: dict[str, Any] = {
            "token_type": "Bearer",
            "scope": " ".join([*scp, *sorted(request.oidc - {"offline_access"})]),
            "expires_in": self.access_token_lifetime,
            "ext_expires_in": self.access_token_lifetime,
            "access_token": self.active_key.sign(claims),
        }
        if "offline_access" in request.oidc:
            token = secrets.token_urlsafe(64)
            self._refresh[_digest(token)] = RefreshGrant(
                user_id=account.id,
                client_id=app.client_id,
                issued_at=now,
                mfa_done=mfa_done,
                last_used=now,
            )
            result["refresh_token"] = token
        if "openid" in request.oidc:
            result["id_token"] = self.active_key.sign(self.signing.id_claims(app, account, now, form))
        if form.get("client_info") == "1":
            info = {"uid": account.id, "utid": self.tenant_id}
            result["client_info"] = b64url(json.dumps(info).encode())
        return result


def _digest(token: str) -> str:
    # Refresh tokens are kept only as digests: a dump of the sandbox state holds no usable token.
    return hashlib.sha256(token.encode()).hexdigest()


def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%m/%d/%Y %H:%M:%S")
