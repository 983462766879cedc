from __future__ import annotations

import asyncio
from pathlib import Path

from service.bridge.streams import Entry, StreamConsumer, append_presence_batch
from service.core import keys
from service.core.embedded import EmbeddedValkey
from service.core.partitions import Partitions
from service.core.storage import connect_worker
from service.graph.presence import PresenceChange


async def test_a_burst_beyond_the_pool_waits_instead_of_failing(redis_url: str) -> None:
    redis = connect_worker(redis_url, max_connections=2)
    try:
        # Twenty commands at once on two connections: each waits its turn, none raises.
        results = await asyncio.gather(*(redis.blpop([f"empty-{i}"], timeout=0.05) for i in range(20)))
        assert results == [None] * 20
    finally:
        await redis.aclose()


async def test_a_consumer_loop_outlives_a_redis_restart(tmp_path: Path) -> None:
    server = EmbeddedValkey(tmp_path / "valkey", appendonly=True)
    server.start()
    redis = connect_worker(server.url, block_ms=50)
    handled: list[str] = []

    async def handler(entries: list[Entry]) -> dict[str, str]:
        handled.extend(PresenceChange.from_fields(e.fields).user_id for e in entries)
        return {}

    consumer = StreamConsumer(redis, keys.presence_stream(0), "g", handler, block_ms=50)
    stopped = asyncio.Event()
    loop = asyncio.create_task(consumer.run_forever(stopped.is_set))
    try:
        await append_presence_batch(redis, Partitions(), [PresenceChange("before", "Away", "Away")], 1000)
        for _ in range(100):
            if handled:
                break
            await asyncio.sleep(0.02)
        server.stop(kill=True)
        await asyncio.sleep(2.0)  # longer than the client's own retries: the loop itself must keep trying
        assert not loop.done()
        server.start()
        await append_presence_batch(redis, Partitions(), [PresenceChange("after", "Away", "Away")], 1000)
        for _ in range(400):
            if "after" in handled:
                break
            await asyncio.sleep(0.02)
        assert handled == ["before", "after"]
    finally:
        stopped.set()
        await asyncio.wait_for(loop, timeout=10)
        await redis.aclose()
        server.stop()
