"""Resync sweeps: read presence for many users and queue it like a notification.

Graph never resends a missed notification, so presence is re-read with ``getPresencesByUserId``
(650 ids per call, rate-limited and 429-patient through ``GraphClient``) after a subscription is
(re)created, at start-up, after lifecycle events and periodically.  The results go onto the same
presence stream as notifications, so the workers' ordering rule applies to both alike.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from service.bridge.streams import append_presence_batch
from service.core import keys
from service.core.partitions import Partitions
from service.core.settings import PRESENCE_IDS_PER_READ
from service.core.storage import decoded
from service.graph.client import GraphClient, GraphResponse, TokenSource, with_token
from service.graph.presence import PresenceChange, PresenceFormatError, TeamsPresence
from subscriptions import metrics

log = logging.getLogger(__name__)


class Resync:
    def __init__(
        self,
        redis: aioredis.Redis,
        graph: GraphClient,
        app_token: TokenSource,
        *,
        partitions: Partitions,
        stream_maxlen: int = 1_000_000,
        ids_per_call: int = PRESENCE_IDS_PER_READ,
    ) -> None:
        self.redis = redis
        self.graph = graph
        self.app_token = app_token
        self.stream_maxlen = stream_maxlen
        self.partitions = partitions
        self.ids_per_call = min(ids_per_call, PRESENCE_IDS_PER_READ)

    async def read(self, user_ids: Sequence[str], source: str) -> AsyncIterator[list[PresenceChange]]:
        """The presence of ``user_ids`` from Graph, one list per request of at most 650 ids."""
        ids = sorted(set(user_ids))
        for start in range(0, len(ids), self.ids_per_call):
            chunk = ids[start : start + self.ids_per_call]

            async def read(token: str, chunk: list[str] = chunk) -> GraphResponse:
                return await self.graph.request(
                    "POST", "/v1.0/communications/getPresencesByUserId", token=token, body={"ids": chunk}
                )

            response = await with_token(self.app_token, read)
            items = response.body.get("value", []) if isinstance(response.body, dict) else []
            changes: list[PresenceChange] = []
            for item in items:
                try:
                    changes.append(PresenceChange.from_resource(item, source=source))
                except PresenceFormatError as exc:
                    log.warning("%s: skipped a presence Graph returned malformed: %s", source, exc)
            yield changes

    async def sweep(self, user_ids: Sequence[str]) -> int:
        """Read and queue the presence of ``user_ids``; returns how many presences were queued."""
        queued = 0
        async for changes in self.read(user_ids, "resync"):
            if changes:
                await append_presence_batch(self.redis, self.partitions, changes, self.stream_maxlen)
            queued += len(changes)
        metrics.RESYNC_PRESENCES.inc(queued)
        return queued

    async def sweep_changed(self, user_ids: Sequence[str], source: str) -> Sweep:
        """Read ``user_ids`` and queue only the presences that differ from the observed ones.

        Polling every few seconds must not flood the stream with what the workers already know;
        a difference goes the notifications' way, so the workers' ordering rule applies to it.
        """
        sweep = Sweep()
        async for changes in self.read(user_ids, source):
            sweep.requests += 1
            sweep.read += len(changes)
            differing = await self._differing(changes)
            if differing:
                await append_presence_batch(self.redis, self.partitions, differing, self.stream_maxlen)
                sweep.changed.extend(differing)
        return sweep

    async def _differing(self, changes: list[PresenceChange]) -> list[PresenceChange]:
        if not changes:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for change in changes:
                pipe.hmget(keys.observed_presence(change.user_id), "availability", "activity")
            observed = await pipe.execute()
        differing = []
        for change, (availability, activity) in zip(changes, observed, strict=True):
            seen = TeamsPresence(decoded(availability or b""), decoded(activity or b""))
            if not seen.same_as(TeamsPresence(change.availability, change.activity)):
                differing.append(change)
        return differing


@dataclass
class Sweep:
    """What one ``sweep_changed`` did: Graph requests, presences read, and the differences queued."""

    requests: int = 0
    read: int = 0
    changed: list[PresenceChange] = field(default_factory=list)
