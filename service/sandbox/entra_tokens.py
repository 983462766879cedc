"""What the sandbox tenant's tokens look like, and the keys that sign them.

Claims of access and ID tokens, the overlapping signing keys and their JWKS, the checks Graph
makes on a bearer token, and the ``validationTokens`` Graph puts into rich notifications
(docs/protocols.md, "validationTokens").
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Callable
from typing import Any

import jwt

from service.sandbox.clock import Clock
from service.sandbox.entra_model import (
    CHANGE_TRACKING_APP_ID,
    GRAPH_APP_ID,
    GRAPH_RESOURCE,
    V1_ISSUER,
    V2_ISSUER,
    AccessContext,
    Account,
    AppRegistration,
    SigningKey,
    TokenRejected,
    b64url,
)


def pairwise(user_id: str, client_id: str) -> str:
    """The ``sub`` Entra gives a user per app: stable, and different for every app."""
    return b64url(hashlib.sha256(f"{user_id}:{client_id}".encode()).digest())


class TenantSigning:
    """The tenant's signing keys (the newest signs, the previous stays published) and its claims."""

    def __init__(
        self,
        clock: Clock,
        tenant_id: str,
        first: SigningKey | None = None,
        *,
        access_token_lifetime: int = 3599,
        validation_token_lifetime: int = 3600,
    ) -> None:
        self.clock = clock
        self.tenant_id = tenant_id
        self.keys: list[SigningKey] = [first or SigningKey()]
        self.access_token_lifetime = access_token_lifetime
        self.validation_token_lifetime = validation_token_lifetime

    @property
    def active(self) -> SigningKey:
        return self.keys[-1]

    def rotate(self) -> SigningKey:
        """Publish a new key and sign with it; the old one stays in the JWKS, as Entra overlaps them."""
        key = SigningKey()
        self.keys.append(key)
        del self.keys[:-2]
        return key

    def jwks(self) -> dict[str, Any]:
        issuer = V2_ISSUER.format(tid="{tenantid}")
        return {"keys": [key.jwk(issuer) for key in self.keys]}

    def access_claims(self, app: AppRegistration, now: float) -> dict[str, Any]:
        issued = int(now)
        return {
            "aud": GRAPH_RESOURCE,
            "iss": V1_ISSUER.format(tid=self.tenant_id),
            "iat": issued,
            "nbf": issued,
            "exp": issued + self.access_token_lifetime,
            "app_displayname": app.display_name,
            "appid": app.client_id,
            "appidacr": "1" if app.client_secret is not None else "0",
            "tid": self.tenant_id,
            "uti": b64url(secrets.token_bytes(16)),
            "ver": "1.0",
        }

    def id_claims(
        self, app: AppRegistration, account: Account, now: float, form: dict[str, str]
    ) -> dict[str, Any]:
        issued = int(now)
        claims: dict[str, Any] = {
            "aud": app.client_id,
            "iss": V2_ISSUER.format(tid=self.tenant_id),
            "iat": issued,
            "nbf": issued,
            "exp": issued + 3600,
            "name": account.display_name,
            "oid": account.id,
            "preferred_username": account.user_principal_name,
            "sub": pairwise(account.id, app.client_id),
            "tid": self.tenant_id,
            "uti": b64url(secrets.token_bytes(16)),
            "ver": "2.0",
        }
        if form.get("nonce"):
            claims["nonce"] = form["nonce"]
        if account.app_roles:
            claims["roles"] = list(account.app_roles)
        if account.groups:
            claims["groups"] = list(account.groups)
        return claims

    def verify(self, token: str, *, known_app: Callable[[str], bool], leeway: float = 300) -> AccessContext:
        """Check a Graph bearer token against the keys and the clock; raise ``TokenRejected``."""
        if not token:
            raise TokenRejected("Access token is empty.")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenRejected("CompactToken parsing failed with error code: 80049217") from None
        key = next((k for k in self.keys if k.kid == header.get("kid")), None)
        if key is None:
            raise TokenRejected("Access token validation failure. Signing key not found.")
        try:
            claims = jwt.decode(
                token,
                key.private_key.public_key(),
                algorithms=["RS256"],
                options={"verify_aud": False, "verify_exp": False, "verify_nbf": False, "verify_iat": False},
            )
        except jwt.PyJWTError:
            raise TokenRejected("Access token validation failure. Invalid signature.") from None
        if claims.get("aud") not in (GRAPH_RESOURCE, GRAPH_APP_ID, f"{GRAPH_RESOURCE}/"):
            raise TokenRejected("Access token validation failure. Invalid audience.")
        if claims.get("iss") != V1_ISSUER.format(tid=self.tenant_id):
            raise TokenRejected("Access token validation failure. Invalid issuer.")
        now = self.clock.now()
        exp = float(claims.get("exp", 0))
        if now > exp + leeway:
            raise TokenRejected("Lifetime validation failed, the token is expired.")
        if now + leeway < float(claims.get("nbf", 0)):
            raise TokenRejected("Lifetime validation failed, the token is not yet valid.")
        app_id = str(claims.get("appid", ""))
        if not known_app(app_id):
            raise TokenRejected("Access token validation failure. Unknown application.")
        user_id = claims.get("oid") if claims.get("idtyp") == "user" else None
        return AccessContext(
            app_id=app_id,
            tenant_id=str(claims.get("tid", "")),
            user_id=str(user_id) if user_id else None,
            scopes=frozenset(str(claims.get("scp", "")).split()),
            roles=frozenset(str(role) for role in claims.get("roles", [])),
            issued_at=float(claims.get("iat", 0)),
            expires_at=exp,
        )

    def validation_token(self, app_id: str, version: str = "v2") -> str:
        """A ``validationTokens`` entry for one app in this tenant, as Graph's change tracking signs it."""
        now = int(self.clock.now())
        subject = str(uuid.uuid5(uuid.NAMESPACE_URL, f"change-tracking/{self.tenant_id}"))
        claims: dict[str, Any] = {
            "aud": app_id,
            "iat": now,
            "nbf": now,
            "exp": now + self.validation_token_lifetime,
            "tid": self.tenant_id,
            "oid": subject,
            "sub": subject,
            "idtyp": "app",
            "uti": b64url(secrets.token_bytes(16)),
        }
        if version == "v1":
            claims.update(
                {
                    "iss": V1_ISSUER.format(tid=self.tenant_id),
                    "appid": CHANGE_TRACKING_APP_ID,
                    "appidacr": "2",
                    "ver": "1.0",
                }
            )
        else:
            claims.update(
                {
                    "iss": V2_ISSUER.format(tid=self.tenant_id),
                    "azp": CHANGE_TRACKING_APP_ID,
                    "azpacr": "2",
                    "ver": "2.0",
                }
            )
        return self.active.sign(claims)
