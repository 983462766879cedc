"""Resync sweeps: read presence for many users and queue it like a notification.

Graph never resends a missed notification, so presence is re-read with ``getPresencesByUserId``
(650 ids per call, rate-limited and 429-patient through ``GraphClient``) after a subscription is
(re)created, at start-up, after lifecycle events and periodically.  The results go onto the same
presence stream as notifications, so the workers' ordering rule applies to both alike.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import redis.asyncio as aioredis

from service.bridge.streams import append_presence_batch
from service.core.partitions import Partitions
from service.graph.client import GraphClient, GraphResponse, TokenSource, with_token
from service.graph.presence import PresenceChange, PresenceFormatError
from subscriptions import metrics

log = logging.getLogger(__name__)

IDS_PER_CALL = 650


class Resync:
    def __init__(
        self,
        redis: aioredis.Redis,
        graph: GraphClient,
        app_token: TokenSource,
        *,
        partitions: Partitions,
        stream_maxlen: int = 1_000_000,
        ids_per_call: int = IDS_PER_CALL,
    ) -> None:
        self.redis = redis
        self.graph = graph
        self.app_token = app_token
        self.stream_maxlen = stream_maxlen
        self.partitions = partitions
        self.ids_per_call = min(ids_per_call, IDS_PER_CALL)

    async def sweep(self, user_ids: Sequence[str]) -> int:
        """Read and queue the presence of ``user_ids``; returns how many presences were queued."""
        ids = sorted(set(user_ids))
        queued = 0
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
                    changes.append(PresenceChange.from_resource(item, source="resync"))
                except PresenceFormatError as exc:
                    log.warning("resync: skipped a presence Graph returned malformed: %s", exc)
            if changes:
                await append_presence_batch(self.redis, self.partitions, changes, self.stream_maxlen)
            queued += len(changes)
        metrics.RESYNC_PRESENCES.inc(queued)
        return queued
