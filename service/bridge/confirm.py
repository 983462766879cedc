"""Confirming presence changes that carry no order of their own.

Microsoft documents the decrypted presence payload with ``id``, ``availability`` and ``activity``
only (docs/protocols.md, "Decrypted presence payload"); without a ``sequenceNumber`` the workers
order changes by arrival.  Graph retries a failed delivery for hours, so an old state can arrive
after a newer one and would stay until the next resync sweep.  Each such change is therefore
only a trigger: ``delay_seconds`` later the user's presence is read with
``getPresencesByUserId`` (up to 650 users per request, shared by every worker process) and
queued like a notification, so a late or repeated delivery is corrected within a few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from service.core import keys
from service.core.settings import PRESENCE_IDS_PER_READ
from service.graph.presence import PresenceChange

log = logging.getLogger(__name__)


# KEYS: the confirm set. ARGV: now, limit. Pops (claims) the users due by now.
_POP_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #due > 0 then redis.call('ZREM', KEYS[1], unpack(due)) end
return due
"""

Read = Callable[[Sequence[str]], Awaitable[int]]


class Confirmer:
    def __init__(
        self,
        redis: aioredis.Redis,
        read: Read,
        *,
        delay_seconds: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.read = read
        self.delay = delay_seconds
        self.clock = clock
        self._pop = redis.register_script(_POP_DUE)
        self.confirmed = 0

    async def on_presence(self, changes: list[PresenceChange]) -> None:
        """A worker listener: notifications without a sequence number are confirmed by a read."""
        users = {c.user_id for c in changes if c.sequence is None and c.source == "notification"}
        if users:
            # NX: a user already waiting for a read keeps its earlier time; one read answers both.
            await self.redis.zadd(
                keys.PRESENCE_CONFIRM, dict.fromkeys(users, self.clock() + self.delay), nx=True
            )

    async def run_due(self) -> int:
        """Read the presence of every user due now; returns how many were read."""
        done = 0
        while True:
            raw = await self._pop(
                keys=[keys.PRESENCE_CONFIRM], args=[repr(self.clock()), PRESENCE_IDS_PER_READ]
            )
            users = [u.decode() if isinstance(u, bytes) else str(u) for u in raw]
            if not users:
                return done
            try:
                await self.read(users)
            except Exception as exc:  # Graph down or throttling: try these users again shortly
                log.warning("presence confirm of %d user(s) failed: %s", len(users), type(exc).__name__)
                await self.redis.zadd(
                    keys.PRESENCE_CONFIRM, dict.fromkeys(users, self.clock() + 5.0), nx=True
                )
                return done
            done += len(users)
            self.confirmed += len(users)

    async def run(self, stop: asyncio.Event, tick: float = 0.25) -> None:
        while not stop.is_set():
            try:
                await self.run_due()
            except (RedisError, OSError) as exc:
                log.warning("presence confirm: storage unavailable (%s)", type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=tick)
