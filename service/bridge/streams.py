"""Redis Streams: appending work, and a consumer-group reader that loses nothing.

Delivery is at-least-once.  A consumer first re-reads its own pending entries (it may have died
after reading them), then reclaims entries that a dead consumer left idle (XAUTOCLAIM), then reads
new ones.  An entry is acknowledged only after its handler stored the result; an entry delivered
``max_deliveries`` times without success moves to the dead-letter stream with its last error.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from service.bridge import deadletters
from service.core import keys
from service.core.partitions import Partitions
from service.core.storage import decoded, is_cluster_client
from service.graph.presence import PresenceChange

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Entry:
    id: str
    fields: dict[str, str]
    deliveries: int


# A handler gets a batch and returns, per entry id that failed, the reason; ids absent succeeded.
Handler = Callable[[list[Entry]], Awaitable[dict[str, str]]]


def _decode(fields: dict[Any, Any]) -> dict[str, str]:
    return {
        (k.decode() if isinstance(k, bytes) else str(k)): (v.decode() if isinstance(v, bytes) else str(v))
        for k, v in fields.items()
    }


async def append_presence_batch(
    redis: aioredis.Redis, partitions: Partitions, changes: list[PresenceChange], maxlen: int
) -> None:
    """One round trip for a whole notification batch, each change on its user's partition.

    On a single server a batch within one partition is queued whole or not at all (MULTI).  On
    a cluster, and across partitions, a batch is a plain pipeline (see ``is_cluster_client``):
    if a part fails, the caller answers 503 and Graph delivers the batch again, and the changes
    already queued come back as duplicates, which the observed-state compare-and-set recognises.
    """
    streams = [partitions.presence_stream(c.user_id) for c in changes]
    whole = len(set(streams)) == 1 and not is_cluster_client(redis)
    async with redis.pipeline(transaction=whole) as pipe:
        for stream, change in zip(streams, changes, strict=True):
            pipe.xadd(stream, change.to_fields(), maxlen=maxlen, approximate=True)  # type: ignore[arg-type]
        await pipe.execute()


async def append_lifecycle_batch(redis: aioredis.Redis, events: list[dict[str, Any]], maxlen: int) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        for event in events:
            pipe.xadd(
                keys.LIFECYCLE_STREAM,
                {"event": json.dumps(event, separators=(",", ":"))},
                maxlen=maxlen,
                approximate=True,
            )
        await pipe.execute()


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class StreamConsumer:
    """Reads one stream as one consumer of a group; ``run_once`` is the burst mode tests use."""

    def __init__(
        self,
        redis: aioredis.Redis,
        stream: str,
        group: str,
        handler: Handler,
        *,
        name: str | None = None,
        batch: int = 100,
        block_ms: int = 1000,
        claim_idle_ms: int = 60_000,
        max_deliveries: int = 5,
        dead_letter_max_entries: int = deadletters.DEFAULT_MAX_ENTRIES,
        dead_letter_max_age_seconds: float = deadletters.DEFAULT_MAX_AGE_SECONDS,
    ) -> None:
        self.redis = redis
        self.stream = stream
        self.group = group
        self.handler = handler
        self.name = name or consumer_name()
        self.batch = batch
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.max_deliveries = max_deliveries
        self.dead_letter_max_entries = dead_letter_max_entries
        self.dead_letter_max_age_seconds = dead_letter_max_age_seconds
        self._own_pending_done = False
        self._last_claim = 0.0
        self.processed = 0
        self.dead_lettered = 0
        self.reclaimed = 0

    async def ensure_group(self) -> None:
        try:
            # "0", not "$": entries queued before the first worker ever started are work too.
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run_once(self, *, block: bool = False) -> int:
        """One round: own pending, reclaimed, then new entries.  Returns how many were handled."""
        entries: list[Entry] = []
        if not self._own_pending_done:
            entries = await self._read("0")
            if len(entries) < self.batch:
                self._own_pending_done = True
        now = time.monotonic()
        if not entries and (now - self._last_claim) * 1000 >= self.claim_idle_ms / 2:
            self._last_claim = now
            entries = await self._claim()
        if not entries:
            entries = await self._read(">", block_ms=self.block_ms if block else None)
        if entries:
            await self._process(entries)
        return len(entries)

    async def drain(self) -> int:
        """Handle everything available now, including reclaimable entries; never blocks."""
        total = 0
        self._last_claim = 0.0
        while handled := await self.run_once():
            total += handled
            self._last_claim = 0.0
        return total

    async def run_forever(self, stopping: Callable[[], bool]) -> None:
        await self.ensure_group()
        while not stopping():
            try:
                await self.run_once(block=True)
            except (RedisError, OSError) as exc:
                # Redis restarting or overloaded: what was read stays pending and is read again.
                log.warning("stream %s: Redis unavailable (%s); retrying", self.stream, type(exc).__name__)
                await asyncio.sleep(1.0)

    async def _read(self, start: str, block_ms: int | None = None) -> list[Entry]:
        reply: Any = await self.redis.xreadgroup(
            self.group, self.name, {self.stream: start}, count=self.batch, block=block_ms
        )
        if not reply:
            return []
        raw = reply[0][1]
        if start == ">":
            return [Entry(decoded(i), _decode(f), 1) for i, f in raw]
        # Own pending entries: the delivery counter was raised by this very read.
        return await self._with_counts([(decoded(i), f) for i, f in raw if f])

    async def _claim(self) -> list[Entry]:
        reply: Any = await self.redis.xautoclaim(
            self.stream,
            self.group,
            self.name,
            min_idle_time=self.claim_idle_ms,
            start_id="0-0",
            count=self.batch,
        )
        claimed = reply[1]
        # Entries trimmed from the stream while pending come back as ids without fields (Redis >= 7).
        deleted = [decoded(i) for i in reply[2]] if len(reply) > 2 else []
        if deleted:
            await self.redis.xack(self.stream, self.group, *deleted)
            log.warning(
                "stream %s: %d pending entries were trimmed before handling", self.stream, len(deleted)
            )
        entries = await self._with_counts([(decoded(i), f) for i, f in claimed if f])
        self.reclaimed += len(entries)
        return entries

    async def _with_counts(self, raw: list[tuple[str, Any]]) -> list[Entry]:
        if not raw:
            return []
        counts: dict[str, int] = {}
        pending = await self.redis.xpending_range(
            self.stream, self.group, raw[0][0], raw[-1][0], len(raw) * 2
        )
        for item in pending:
            counts[decoded(item["message_id"])] = int(item["times_delivered"])
        return [Entry(i, _decode(f), counts.get(i, 1)) for i, f in raw]

    async def _process(self, entries: list[Entry]) -> None:
        try:
            failures = await self.handler(entries)
        except Exception as exc:  # a handler crash fails the whole batch; each entry counts one try
            log.exception("stream %s: handler failed for %d entries", self.stream, len(entries))
            failures = {e.id: f"{type(exc).__name__}: {exc}" for e in entries}
        done = [e.id for e in entries if e.id not in failures]
        dead = [e for e in entries if e.id in failures and e.deliveries >= self.max_deliveries]
        if dead:
            # Not one transaction with the acknowledgement: the dead-letter stream has a hash tag
            # of its own.  Stored first, so a crash in between can only dead-letter an entry twice.
            async with self.redis.pipeline(transaction=False) as pipe:
                for entry in dead:
                    deadletters.add(
                        pipe,
                        stream=self.stream,
                        entry_id=entry.id,
                        reason=failures[entry.id],
                        deliveries=entry.deliveries,
                        fields=entry.fields,
                        max_entries=self.dead_letter_max_entries,
                        max_age_seconds=self.dead_letter_max_age_seconds,
                    )
                await pipe.execute()
        if done or dead:
            await self.redis.xack(self.stream, self.group, *done, *(e.id for e in dead))
        self.processed += len(done)
        self.dead_lettered += len(dead)
        for entry in dead:
            log.error(
                "stream %s: entry %s moved to dead letters after %d deliveries: %s",
                self.stream,
                entry.id,
                entry.deliveries,
                failures[entry.id][:200],
            )


class PartitionedConsumer:
    """One consumer of a group on every partition stream of one kind, under one consumer name.

    Every worker process reads every partition: the consumer group hands each entry to one of
    them, and a dead worker's pending entries are reclaimed (XAUTOCLAIM) by whichever worker
    reads that partition next, so no partition is left without a reader while one worker lives.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        streams: list[str],
        group: str,
        handler: Handler,
        *,
        name: str | None = None,
        **options: Any,
    ) -> None:
        self.redis = redis
        self.group = group
        self.handler = handler
        self.name = name or consumer_name()
        self.options = options
        self.consumers = [self._consumer(stream) for stream in streams]

    def _consumer(self, stream: str) -> StreamConsumer:
        return StreamConsumer(self.redis, stream, self.group, self.handler, name=self.name, **self.options)

    @property
    def streams(self) -> list[str]:
        return [c.stream for c in self.consumers]

    async def ensure_group(self) -> None:
        for consumer in self.consumers:
            await consumer.ensure_group()

    async def also_drain_if_present(self, stream: str) -> bool:
        """Read ``stream`` too if it exists (what an older layout left queued); returns whether."""
        if stream in self.streams or not await self.redis.exists(stream):
            return False
        self.consumers.append(self._consumer(stream))
        return True

    async def run_once(self) -> int:
        return sum([await c.run_once() for c in self.consumers])

    async def drain(self) -> int:
        # Side by side, as in run_forever: one partition's Python work overlaps another's Redis.
        return sum(await asyncio.gather(*(c.drain() for c in self.consumers)))

    async def run_forever(self, stopping: Callable[[], bool]) -> None:
        await asyncio.gather(*(c.run_forever(stopping) for c in self.consumers))

    @property
    def processed(self) -> int:
        return sum(c.processed for c in self.consumers)

    @property
    def dead_lettered(self) -> int:
        return sum(c.dead_lettered for c in self.consumers)

    @property
    def reclaimed(self) -> int:
        return sum(c.reclaimed for c in self.consumers)
