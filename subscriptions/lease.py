"""A Redis lease that makes exactly one of many scheduler replicas act.

The holder writes its token with a TTL, through redis-py's ``Lock``: renewal and release compare
the token first, so a replica whose lease already expired (paused process, network split) can
neither extend nor delete the lease a successor now holds.  A killed holder is replaced once the
TTL runs out.
"""

from __future__ import annotations

import os
import secrets
import socket

import redis.asyncio as aioredis
from redis.asyncio.lock import Lock
from redis.exceptions import LockError


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
        self._lock = Lock(redis, key, timeout=self.ttl_ms / 1000, blocking=False, thread_local=False)
        # The token outlives one acquire: a replica renews the lease it took in an earlier pass.
        self._lock.local.token = self.token.encode()

    async def acquire(self) -> bool:
        """Take the lease if free, or extend it if already ours.  True when this replica holds it."""
        if await self._lock.acquire(token=self.token):
            return True
        return await self.renew()

    async def renew(self) -> bool:
        try:
            return await self._lock.reacquire()
        except LockError:
            return False

    async def release(self) -> bool:
        try:
            await self._lock.release()
        except LockError:
            return False
        finally:
            self._lock.local.token = self.token.encode()
        return True

    async def holder(self) -> str | None:
        raw = await self.redis.get(self.key)
        if raw is None:
            return None
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    async def ensure(self) -> None:
        """Raise ``LeaseLost`` unless this replica still holds the lease (and extend it)."""
        if not await self.renew():
            raise LeaseLost(self.key)
