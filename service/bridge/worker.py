"""The worker: presence changes from the stream into observed state, in order, exactly once in effect."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from service.bridge.observed import ObservedStore, Outcome
from service.bridge.streams import Entry, PartitionedConsumer
from service.core import keys
from service.core.partitions import Partitions
from service.core.settings import Settings
from service.graph.presence import PresenceChange, PresenceFormatError

log = logging.getLogger(__name__)

# Called after the observed presence is stored, with the readable changes of the batch in stream
# order, stale ones too: a stale change can still carry news (the user's own state behind the
# bridge's session).  A duplicate read for the first time is left out: what it says is stored
# already (a confirm read or a Graph retry of a change that was handled), and passing it on would
# reconcile the user once more for nothing.  A redelivered entry is passed on even as a duplicate:
# its first delivery may have stored the change and died before the listeners ran.
ChangeListener = Callable[[list[PresenceChange]], Awaitable[None]]


class PresenceWorker:
    def __init__(
        self,
        redis: aioredis.Redis,
        settings: Settings,
        partitions: Partitions,
        *,
        name: str | None = None,
        block_ms: int = 1000,
        listeners: list[ChangeListener] | None = None,
    ) -> None:
        self.store = ObservedStore(redis)
        self.redis = redis
        self.listeners = list(listeners or [])
        self.outcomes: dict[Outcome, int] = dict.fromkeys(Outcome, 0)
        self.consumer = PartitionedConsumer(
            redis,
            partitions.presence_streams(),
            keys.WORKER_GROUP,
            self.handle,
            name=name,
            batch=settings.worker_batch,
            block_ms=block_ms,
            claim_idle_ms=settings.worker_claim_idle_ms,
            max_deliveries=settings.worker_max_deliveries,
            dead_letter_max_entries=settings.dead_letter_max_entries,
            dead_letter_max_age_seconds=settings.dead_letter_max_age_days * 86_400,
        )

    async def handle(self, entries: list[Entry]) -> dict[str, str]:
        failures: dict[str, str] = {}
        parsed: list[tuple[Entry, PresenceChange]] = []
        for entry in entries:
            try:
                parsed.append((entry, PresenceChange.from_fields(entry.fields)))
            except PresenceFormatError as exc:
                failures[entry.id] = str(exc)
        if not parsed:
            return failures
        results = await self.store.apply_many([change for _, change in parsed])
        stored: list[PresenceChange] = []
        for (entry, change), outcome in zip(parsed, results, strict=True):
            if isinstance(outcome, RedisError):
                failures[entry.id] = f"store failed: {outcome}"
                continue
            self.outcomes[outcome] += 1
            if outcome is not Outcome.DUPLICATE or entry.deliveries > 1:
                stored.append(change)
        if stored:
            for listener in self.listeners:
                await listener(stored)
        return failures

    async def drain(self) -> int:
        await self.consumer.ensure_group()
        return await self.consumer.drain()

    async def start(self) -> None:
        """Create the groups, and read what the single stream of an older layout still holds."""
        await self.consumer.also_drain_if_present(keys.LEGACY_PRESENCE_STREAM)
        await self.consumer.ensure_group()

    async def run(self, stopping: Callable[[], bool]) -> None:
        await self.consumer.run_forever(stopping)
