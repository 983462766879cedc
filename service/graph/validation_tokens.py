"""The ``validationTokens`` JWTs that come with rich notifications (docs/protocols.md, "validationTokens").

Signing keys are fetched in the background and kept warm, so no notification waits on a fetch.
A token whose ``kid`` is unknown makes the keys refresh, at most once a minute: if the keys are
older than that, the notification is answered 503 so Graph retries after the refresh; if they are
fresh, the token is simply bad.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import OrderedDict
from typing import Any

import aiohttp
import jwt

log = logging.getLogger(__name__)

# Microsoft Graph Change Tracking: the only publisher whose tokens we accept.
CHANGE_TRACKING_APP_ID = "0bf30f3b-4a52-48df-9a82-234910c4a086"
UNKNOWN_KID_REFRESH_SECONDS = 60.0
_LEEWAY_SECONDS = 120
_FETCH_TIMEOUT = aiohttp.ClientTimeout(total=10)


class TokenRejected(Exception):
    """The token is not a valid Change Tracking token for this app; ``reason`` is a metric label."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class KeysUnavailable(Exception):
    """Signing keys cannot be had right now; the caller answers 503 so Graph retries."""


class SigningKeys:
    """The JWKS named by OpenID metadata, refreshed in the background."""

    def __init__(
        self,
        metadata_url: str,
        session_factory: Any,
        *,
        refresh_seconds: float = 3600.0,
        retry_seconds: float = 5.0,
    ) -> None:
        self.metadata_url = metadata_url
        self._session_factory = session_factory
        self.refresh_seconds = refresh_seconds
        self.retry_seconds = retry_seconds
        self._keys: dict[str, jwt.PyJWK] = {}
        self.loaded_at = 0.0
        self._last_attempt = 0.0
        self._refreshing: asyncio.Task[None] | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self.last_error: str | None = None

    async def start(self) -> None:
        """Try one load now (a failure is not fatal) and keep refreshing in the background."""
        await self._refresh_once()
        self._loop_task = asyncio.create_task(self._loop(), name="jwks-refresh")

    async def stop(self) -> None:
        for task in (self._loop_task, self._refreshing):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _loop(self) -> None:
        while True:
            delay = self.refresh_seconds if self._keys and self.last_error is None else self.retry_seconds
            await asyncio.sleep(delay)
            await self._refresh_once()

    async def _refresh_once(self) -> None:
        self._last_attempt = time.monotonic()
        try:
            async with self._session_factory() as session:
                metadata = await _get_json(session, self.metadata_url)
                jwks_uri = metadata.get("jwks_uri")
                if not isinstance(jwks_uri, str) or not jwks_uri.startswith("https://"):
                    raise ValueError("OpenID metadata has no https jwks_uri")
                document = await _get_json(session, jwks_uri)
            keys: dict[str, jwt.PyJWK] = {}
            for entry in document.get("keys", []):
                kid = entry.get("kid") if isinstance(entry, dict) else None
                if not isinstance(kid, str) or entry.get("kty") != "RSA":
                    continue
                with contextlib.suppress(jwt.PyJWKError, jwt.InvalidKeyError, ValueError):
                    keys[kid] = jwt.PyJWK(entry, algorithm="RS256")
            if not keys:
                raise ValueError("JWKS holds no RSA keys")
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("signing keys: refresh from %s failed: %s", self.metadata_url, self.last_error)
            return
        self._keys = keys
        self.loaded_at = time.monotonic()
        self.last_error = None

    def lookup(self, kid: str) -> jwt.PyJWK:
        key = self._keys.get(kid)
        if key is not None:
            return key
        now = time.monotonic()
        if self._keys and now - self.loaded_at < UNKNOWN_KID_REFRESH_SECONDS:
            raise TokenRejected("unknown_kid")
        # With no keys at all, retry at the background pace; otherwise once a minute at most.
        interval = UNKNOWN_KID_REFRESH_SECONDS if self._keys else self.retry_seconds
        if now - self._last_attempt >= interval:
            self._kick()
        raise KeysUnavailable(f"no signing key {kid!r} yet; refresh under way")

    def _kick(self) -> None:
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.create_task(self._refresh_once(), name="jwks-refresh-now")

    @property
    def ready(self) -> bool:
        return bool(self._keys)


async def _get_json(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(url, timeout=_FETCH_TIMEOUT) as response:
        if response.status != 200:
            raise ValueError(f"{url} answered {response.status}")
        body = await response.json(content_type=None)
    if not isinstance(body, dict):
        raise ValueError(f"{url} did not answer a JSON object")
    return body


class TokenVerifier:
    def __init__(self, keys: SigningKeys, *, tenant_id: str, client_id: str, cache_size: int = 1024) -> None:
        self.keys = keys
        self.client_id = client_id
        self.issuers = {
            "1.0": f"https://sts.windows.net/{tenant_id}/",
            "2.0": f"https://login.microsoftonline.com/{tenant_id}/v2.0",
        }
        # The same token comes with every notification for about an hour: remember verdicts.
        self._verified: OrderedDict[bytes, float] = OrderedDict()
        self._cache_size = cache_size

    def verify(self, token: object) -> None:
        """Raise ``TokenRejected`` or ``KeysUnavailable``; return quietly for a good token."""
        if not isinstance(token, str) or not token or len(token) > 16_384:
            raise TokenRejected("malformed_token")
        digest = hashlib.sha256(token.encode()).digest()
        expires = self._verified.get(digest)
        if expires is not None and time.time() < expires:
            return
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenRejected("malformed_token") from None
        if header.get("alg") != "RS256":
            raise TokenRejected("bad_algorithm")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise TokenRejected("no_kid")
        key = self.keys.lookup(kid)
        try:
            claims = jwt.decode(
                token,
                key=key.key,
                algorithms=["RS256"],
                audience=self.client_id,
                leeway=_LEEWAY_SECONDS,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenRejected("expired_token") from None
        except jwt.InvalidAudienceError:
            raise TokenRejected("wrong_audience") from None
        except jwt.PyJWTError:
            raise TokenRejected("bad_token_signature") from None
        version = claims.get("ver")
        expected_issuer = self.issuers.get(version) if isinstance(version, str) else None
        if expected_issuer is None or claims.get("iss") != expected_issuer:
            raise TokenRejected("wrong_issuer")
        publisher = claims.get("appid" if version == "1.0" else "azp")
        if publisher != CHANGE_TRACKING_APP_ID:
            raise TokenRejected("wrong_publisher")
        self._verified[digest] = float(claims["exp"])
        if len(self._verified) > self._cache_size:
            self._verified.popitem(last=False)
