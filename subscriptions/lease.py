"""A Redis lease that makes exactly one of many scheduler replicas act.

The holder writes a random token with a TTL.  Renewal and release are compare-and-set scripts, so
a replica whose lease already expired (paused process, network split) can neither extend nor
delete the lease a successor now holds.  A killed holder is replaced once the TTL runs out.
"""

from __future__ import annotations

import os
import secrets
import socket

import redis.asyncio as aioredis

# Extends only the holder's own lease.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# Deletes only the holder's own lease.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class LeaseLost(Exception):
    """The lease expired or passed to another replica while this one was acting."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"lease {key} is no longer held by this replica")


class Lease:
    def __init__(
        self, redis: aioredis.Redis, key: str, ttl_seconds: float, *, token: str | None = None
    ) -> None:
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        self.redis = redis
        self.key = key
        self.ttl_ms = max(1, int(ttl_seconds * 1000))
        # Host and pid make ``holder()`` tell an operator which replica leads; the random part
        # keeps two leases of one process (tests, restarts with a reused pid) apart.
        self.token = token or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(8)}"

    async def acquire(self) -> bool:
        """Take the lease if free, or extend it if already ours.  True when this replica holds it."""
        if await self.redis.set(self.key, self.token, nx=True, px=self.ttl_ms):
            return True
        return await self.renew()

    async def renew(self) -> bool:
        return bool(await self.redis.eval(_RENEW, 1, self.key, self.token, self.ttl_ms))

    async def release(self) -> bool:
        return bool(await self.redis.eval(_RELEASE, 1, self.key, self.token))

    async def holder(self) -> str | None:
        raw = await self.redis.get(self.key)
        if raw is None:
            return None
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    async def ensure(self) -> None:
        """Raise ``LeaseLost`` unless this replica still holds the lease (and extend it)."""
        if not await self.renew():
            raise LeaseLost(self.key)
