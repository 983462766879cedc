"""Confirm reads for changes without sequenceNumber: one read per user however many triggers,
batched 650 at a time, never for the reads' own results, tried again when Graph fails."""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis

from service.bridge.confirm import Confirmer
from service.core.settings import PRESENCE_IDS_PER_READ
from service.graph.presence import PresenceChange


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_triggers_collapse_into_one_batched_read_after_the_delay(redis_client: aioredis.Redis) -> None:
    reads: list[list[str]] = []

    async def read(users: Sequence[str]) -> int:
        reads.append(sorted(users))
        return len(users)

    clock = Clock()
    confirmer = Confirmer(redis_client, read, delay_seconds=1.0, clock=clock)
    changes = [PresenceChange(f"u{i:04d}", "Busy", "InACall") for i in range(700)]
    await confirmer.on_presence(changes)
    await confirmer.on_presence(changes[:10])  # a second trigger for the same users: still one read
    await confirmer.on_presence(
        [
            PresenceChange("ordered", "Busy", "InACall", sequence="7"),  # has its own order
            PresenceChange("resynced", "Busy", "InACall", source="resync"),  # a read's own result
        ]
    )
    assert await confirmer.run_due() == 0  # not before the delay
    clock.now += 1.0
    assert await confirmer.run_due() == 700
    assert [len(batch) for batch in reads] == [PRESENCE_IDS_PER_READ, 50]
    read_users = {user for batch in reads for user in batch}
    assert "ordered" not in read_users
    assert "resynced" not in read_users
    assert await confirmer.run_due() == 0


async def test_a_failed_read_is_tried_again_shortly(redis_client: aioredis.Redis) -> None:
    attempts = 0

    async def read(users: Sequence[str]) -> int:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise ConnectionError("graph down")
        return len(users)

    clock = Clock()
    confirmer = Confirmer(redis_client, read, delay_seconds=1.0, clock=clock)
    await confirmer.on_presence([PresenceChange("u1", "Away", "Away")])
    clock.now += 1.0
    assert await confirmer.run_due() == 0
    clock.now += 5.0
    assert await confirmer.run_due() == 1
    assert attempts == 2
