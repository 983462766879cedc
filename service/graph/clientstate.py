"""The ``clientState`` secret of each subscription, where the web tier checks it.

The subscription code writes a fresh random secret per subscription; the webhook compares an
item's ``clientState`` with it in constant time.  Values are sealed at rest.
"""

from __future__ import annotations

import hmac
import secrets

import redis.asyncio as aioredis

from service.core import keys
from service.core.secretbox import SealError, SecretBox


def new_client_state() -> str:
    # 32 bytes of entropy in 43 URL-safe characters: far inside Graph's 128-character limit.
    return secrets.token_urlsafe(32)


class ClientStates:
    def __init__(self, redis: aioredis.Redis, box: SecretBox) -> None:
        self.redis = redis
        self.box = box

    def _context(self, subscription_id: str) -> str:
        return f"{keys.SUBSCRIPTION_SECRETS}/{subscription_id}"

    async def set(self, subscription_id: str, client_state: str) -> None:
        sealed = self.box.seal(client_state.encode(), self._context(subscription_id))
        await self.redis.hset(keys.SUBSCRIPTION_SECRETS, subscription_id, sealed)

    async def delete(self, subscription_id: str) -> None:
        await self.redis.hdel(keys.SUBSCRIPTION_SECRETS, subscription_id)

    async def get_many(self, subscription_ids: list[str]) -> dict[str, str]:
        """Known secrets for the given ids (unknown ids are absent). One round trip."""
        if not subscription_ids:
            return {}
        values = await self.redis.hmget(keys.SUBSCRIPTION_SECRETS, subscription_ids)
        found: dict[str, str] = {}
        for subscription_id, sealed in zip(subscription_ids, values, strict=True):
            if sealed is None:
                continue
            try:
                raw = sealed if isinstance(sealed, bytes) else sealed.encode()
                found[subscription_id] = self.box.open(raw, self._context(subscription_id)).decode()
            except SealError:
                continue  # a value we cannot open authenticates nothing
        return found

    async def ids(self) -> list[str]:
        return sorted(
            k.decode() if isinstance(k, bytes) else k
            for k in await self.redis.hkeys(keys.SUBSCRIPTION_SECRETS)
        )


def matches(expected: str, given: object) -> bool:
    """Constant-time comparison; a non-string ``given`` never matches."""
    if not isinstance(given, str):
        return False
    return hmac.compare_digest(expected.encode(), given.encode())
