"""Read-back: what STARFACE shows for a user, compared with what the bridge applied there.

Others write DND and the status text too: the user's UCC client overwrites the chat status text
at intervals, and the user may switch DND on a phone key or in the app (docs/readback.md).  The
UCI session pass (``service.starface.sessions``) reads ``getUserState`` with every keepAlive and
hands it here.  Level-triggered like everything else: the read is only *recorded* in the user's
bridge record and, when it shows something new that differs from what the bridge applied, the
user is marked due; ``service.bridge.desired.decide`` and the reconciler's apply step decide what
to do about it (restore within ``STARFACE_REWRITES_PER_HOUR``, respect or enforce a DND).

The bridge's own writes are never taken for someone else's: a read that overlaps a bridge write
(``writing_at`` set, or sent before ``written_at``) is dropped, and a recorded read counts only
while it is newer than the bridge's last write.  Both times come from one clock per deployment
(the processes' wall clocks), so the hosts' clocks must agree within a second or so.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis

from service.bridge.due import Schedule
from service.bridge.identity import IdentityStore
from service.bridge.userstate import UserStateStore
from service.core import metrics
from service.core.partitions import Partitions
from service.starface.gateway import GatewayError, UserState

log = logging.getLogger(__name__)

UNLINKED = "unlinked"
FAILED = "failed"


class ReadBack:
    def __init__(
        self, redis: aioredis.Redis, partitions: Partitions, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.clock = clock
        self.identity = IdentityStore(redis)
        self.state = UserStateStore(redis)
        self.schedule = Schedule(redis, partitions)

    async def check(self, login: str, read: Callable[[], Awaitable[UserState]]) -> str:
        """Read the user's STARFACE state with ``read`` and record it; returns how it compared."""
        user_id = await self.identity.user_for(login)
        if user_id is None:
            return UNLINKED
        sent_at = self.clock()
        try:
            shown = await read()
        except GatewayError as exc:
            # The keepAlive just worked; the next pass reads again.
            log.info("read-back of login %s failed: %s", login, exc)
            metrics.STARFACE_READ_BACKS.labels(FAILED).inc()
            return FAILED
        result = await self.state.record_seen(
            user_id, sent_at=sent_at, dnd=shown.dnd, text=shown.status_text, now=self.clock()
        )
        metrics.STARFACE_READ_BACKS.labels("differs" if result == "due" else result).inc()
        if result == "due":
            await self.schedule.mark([user_id], self.clock())
        return result
