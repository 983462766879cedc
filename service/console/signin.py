"""Sign-in with Microsoft: OpenID Connect authorization code flow with PKCE, through MSAL.

MSAL builds the authorize URL with ``state``, ``nonce`` and the PKCE challenge, and on the way back
checks the state, redeems the code with the verifier and checks the id token's nonce.  The flow
(it holds the verifier) waits in Redis, sealed, for at most ten minutes between the two steps, so
any console replica can finish a sign-in another one began.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import urllib.parse
from dataclasses import dataclass
from typing import Any

import msal
import redis.asyncio as aioredis
import requests

from service.core import keys
from service.core.secretbox import SealError, SecretBox
from service.core.settings import Settings, reveal
from subscriptions.tokens import PUBLIC_ENTRA_HOSTS, msal_session

FLOW_SECONDS = 600


class SignInError(Exception):
    """A sign-in that did not complete; ``reason`` is safe to show (never a token or code)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True)
class Identity:
    oid: str
    username: str
    name: str
    roles: tuple[str, ...]
    groups: tuple[str, ...]


@dataclass(frozen=True)
class PendingSignIn:
    purpose: str
    next_path: str


class MicrosoftSignIn:
    def __init__(self, redis: aioredis.Redis, settings: Settings, box: SecretBox, redirect_uri: str) -> None:
        self.redis = redis
        self.settings = settings
        self.redirect_uri = redirect_uri
        self.box = box
        self._app: Any = None

    @property
    def available(self) -> bool:
        return bool(reveal(self.settings.client_secret)) and bool(self.settings.client_id)

    def _build(self) -> Any:
        host = urllib.parse.urlsplit(self.settings.authority_base_url).hostname or ""
        return msal.ConfidentialClientApplication(
            self.settings.client_id,
            client_credential=reveal(self.settings.client_secret),
            authority=f"{self.settings.authority_base_url.rstrip('/')}/{self.settings.tenant_id}",
            http_client=msal_session(self.settings.authority_base_url, self.settings.extra_ca_file, 15.0),
            instance_discovery=host in PUBLIC_ENTRA_HOSTS,
        )

    async def _msal(self) -> Any:
        if self._app is None:
            try:
                self._app = await asyncio.to_thread(self._build)
            except (requests.RequestException, ValueError) as exc:
                raise SignInError(f"Entra cannot be reached ({type(exc).__name__})") from None
        return self._app

    async def begin(self, purpose: str, next_path: str) -> str:
        """Start a sign-in; returns the Entra URL to send the browser to."""
        app = await self._msal()
        state = secrets.token_urlsafe(24)
        flow = await asyncio.to_thread(
            app.initiate_auth_code_flow,
            scopes=[],
            redirect_uri=self.redirect_uri,
            state=state,
            # The code arrives in a POST body, not in a URL that browser history and logs keep.
            response_mode="form_post",
        )
        record = json.dumps({"flow": flow, "purpose": purpose, "next": next_path})
        context = keys.console_sign_in(state)
        await self.redis.set(context, self.box.seal(record.encode(), context), ex=FLOW_SECONDS)
        return str(flow["auth_uri"])

    async def finish(self, query: dict[str, str]) -> tuple[Identity, PendingSignIn]:
        """Complete the sign-in Entra redirected back from; raises ``SignInError``."""
        state = query.get("state", "")
        context = keys.console_sign_in(state)
        sealed = await self.redis.getdel(context) if state else None
        if sealed is None:
            raise SignInError("this sign-in is unknown or older than ten minutes: start again")
        try:
            record = json.loads(
                self.box.open(sealed if isinstance(sealed, bytes) else sealed.encode(), context)
            )
        except (SealError, ValueError):
            raise SignInError("this sign-in cannot be read: start again") from None
        pending = PendingSignIn(str(record["purpose"]), str(record["next"]))
        if "error" in query:
            raise SignInError(
                f"Entra refused the sign-in: {query.get('error_description') or query['error']}"
            )
        app = await self._msal()
        try:
            result = await asyncio.to_thread(app.acquire_token_by_auth_code_flow, record["flow"], query)
        except (requests.RequestException, ValueError) as exc:
            raise SignInError(f"the sign-in could not be completed ({type(exc).__name__})") from None
        if not isinstance(result, dict) or "id_token_claims" not in result:
            detail = (
                result.get("error_description") or result.get("error") if isinstance(result, dict) else None
            )
            raise SignInError(f"Entra did not sign you in: {str(detail or 'no id token').splitlines()[0]}")
        claims = result["id_token_claims"]
        return (
            Identity(
                oid=str(claims.get("oid", "")),
                username=str(claims.get("preferred_username", "")),
                name=str(claims.get("name", "")),
                roles=tuple(str(r) for r in claims.get("roles", []) or []),
                groups=tuple(str(g) for g in claims.get("groups", []) or []),
            ),
            pending,
        )

    def may_administer(self, identity: Identity) -> bool:
        if self.settings.console_role and self.settings.console_role in identity.roles:
            return True
        group = self.settings.console_group
        return bool(group) and group in identity.groups
