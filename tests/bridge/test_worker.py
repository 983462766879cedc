"""The worker: stream → observed state, ordering, crash hand-over, dead letters."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from service.bridge.observed import ObservedStore, Outcome
from service.bridge.streams import append_presence_batch
from service.bridge.worker import PresenceWorker
from service.core import keys
from service.core.partitions import Partitions
from service.core.settings import Settings
from service.core.storage import connect_worker
from service.graph.presence import PresenceChange
from tests.conftest import SECRET_KEY
from tests.fixtures.webhook import Bridge, stream_entries

USER = "0f6d3a1e-0000-4000-8000-00000000abcd"


def worker(redis: aioredis.Redis, settings: Settings, **kwargs: Any) -> PresenceWorker:
    return PresenceWorker(redis, settings, Partitions(), block_ms=10, **kwargs)


async def test_end_to_end_out_of_order_and_duplicates_newest_wins(bridge: Bridge) -> None:
    sub = await bridge.subscription()
    n = bridge.notifications
    states = [
        ("Available", "Available"),
        ("Busy", "InACall"),
        ("Away", "Away"),
        ("DoNotDisturb", "Presenting"),
    ]
    items = [
        n.item(sub, bridge.certificate, USER, a, b, sequence=f"{i + 1:020d}")
        for i, (a, b) in enumerate(states)
    ]
    # Graph retries and reorders: newest first, then everything again, then one duplicate.
    for batch in ([items[3]], [items[1], items[0]], [items[2]], items, [items[3]]):
        assert (await bridge.post(n.body(batch))).status_code == 202
    w = worker(bridge.redis, bridge.settings)
    assert await w.drain() == 9
    observed = await ObservedStore(bridge.redis).get(USER)
    assert observed is not None
    assert (observed.availability, observed.activity, observed.sequence) == (
        "DoNotDisturb",
        "Presenting",
        f"{4:020d}",
    )
    # Stream order: 4 applied; 2, 1, 3, 1, 2, 3 stale; 4 and 4 duplicates.
    assert (w.outcomes[Outcome.APPLIED], w.outcomes[Outcome.DUPLICATE], w.outcomes[Outcome.STALE]) == (
        1,
        2,
        6,
    )
    pending = await bridge.redis.xpending(keys.presence_stream(0), keys.WORKER_GROUP)
    assert pending["pending"] == 0


async def test_without_sequence_the_later_receipt_wins(
    redis_client: aioredis.Redis, make_settings: Callable[..., Settings]
) -> None:
    changes = [
        PresenceChange(USER, "Busy", "InACall", received_at=200.0),
        PresenceChange(USER, "Available", "Available", received_at=100.0),
        PresenceChange(USER, "Busy", "InACall", received_at=300.0),
    ]
    await append_presence_batch(redis_client, Partitions(), changes, 1000)
    w = worker(redis_client, make_settings())
    await w.drain()
    observed = await ObservedStore(redis_client).get(USER)
    assert observed is not None
    assert (observed.availability, observed.received_at) == ("Busy", 200.0)


async def test_listeners_hear_every_change_after_it_is_stored(
    redis_client: aioredis.Redis, make_settings: Callable[..., Settings]
) -> None:
    heard: list[str] = []

    async def listener(changes: list[PresenceChange]) -> None:
        heard.extend(c.sequence or "" for c in changes)

    await append_presence_batch(
        redis_client,
        Partitions(),
        [PresenceChange(USER, "Busy", "Busy", sequence=s) for s in ("2", "1", "2", "10")],
        1000,
    )
    await worker(redis_client, make_settings(), listeners=[listener]).drain()
    # Stale ones too, in stream order; the duplicate "2" says nothing new and is left out.
    assert heard == ["2", "1", "10"]


async def test_a_redelivered_duplicate_reaches_the_listeners_again(
    redis_client: aioredis.Redis, make_settings: Callable[..., Settings]
) -> None:
    """A worker that stored a change and died before its listeners ran: the redelivery is a
    duplicate by then, and must still reach them, or the user would never be reconciled."""
    heard: list[str] = []
    fail = True

    async def listener(changes: list[PresenceChange]) -> None:
        nonlocal fail
        if fail:
            fail = False
            raise RuntimeError("died before marking the user due")
        heard.extend(c.sequence or "" for c in changes)

    await append_presence_batch(
        redis_client, Partitions(), [PresenceChange(USER, "Busy", "Busy", sequence="5")], 1000
    )
    await worker(redis_client, make_settings(WORKER_CLAIM_IDLE_MS=1), listeners=[listener]).drain()
    assert heard == ["5"]


async def test_poison_entry_moves_to_dead_letters_after_n_deliveries(
    redis_client: aioredis.Redis, make_settings: Callable[..., Settings]
) -> None:
    await redis_client.xadd(keys.presence_stream(0), {"change": "{not json"})
    await append_presence_batch(
        redis_client, Partitions(), [PresenceChange(USER, "Away", "Away", sequence="1")], 1000
    )
    w = worker(redis_client, make_settings(WORKER_MAX_DELIVERIES=3, WORKER_CLAIM_IDLE_MS=1))
    await w.drain()
    for _ in range(5):  # each round reclaims the failed entry once it has been idle a moment
        time.sleep(0.005)
        await w.drain()
    dead = await stream_entries(redis_client, keys.DEAD_LETTER_STREAM)
    assert len(dead) == 1
    fields = dead[0][1]
    assert fields["deliveries"] == "3"
    assert "unreadable stream entry" in fields["reason"]
    assert json.loads(fields["fields"]) == {"change": "{not json"}
    assert (await redis_client.xpending(keys.presence_stream(0), keys.WORKER_GROUP))["pending"] == 0
    assert (await ObservedStore(redis_client).get(USER)) is not None


async def test_dead_letters_are_bounded_by_the_setting(
    redis_client: aioredis.Redis, make_settings: Callable[..., Settings]
) -> None:
    for i in range(5):
        await redis_client.xadd(keys.presence_stream(0), {"change": f"{{not json {i}"})
    settings = make_settings(WORKER_MAX_DELIVERIES=1, DEAD_LETTER_MAX_ENTRIES=2, DEAD_LETTER_MAX_AGE_DAYS=1)
    await worker(redis_client, settings).drain()
    dead = await stream_entries(redis_client, keys.DEAD_LETTER_STREAM)
    assert [json.loads(fields["fields"])["change"] for _, fields in dead] == ["{not json 3", "{not json 4"]


async def test_handler_failure_is_retried_not_lost(
    redis_client: aioredis.Redis, make_settings: Callable[..., Settings]
) -> None:
    calls = 0

    async def flaky(changes: list[PresenceChange]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("downstream hiccup")

    await append_presence_batch(
        redis_client, Partitions(), [PresenceChange(USER, "Busy", "Busy", sequence="1")], 1000
    )
    w = worker(redis_client, make_settings(WORKER_CLAIM_IDLE_MS=1), listeners=[flaky])
    await w.drain()
    time.sleep(0.005)
    await w.drain()
    assert (await redis_client.xpending(keys.presence_stream(0), keys.WORKER_GROUP))["pending"] == 0
    assert await redis_client.xlen(keys.DEAD_LETTER_STREAM) == 0


async def _pending(redis: aioredis.Redis) -> int:
    try:
        return int((await redis.xpending(keys.presence_stream(0), keys.WORKER_GROUP))["pending"])
    except ResponseError:  # the subprocess has not created the group yet
        return 0


@pytest.mark.slow
async def test_sigkilled_worker_leaves_nothing_behind(
    redis_url: str, make_settings: Callable[..., Settings]
) -> None:
    users = 3000
    redis = connect_worker(redis_url)
    changes = [
        PresenceChange(f"user-{i}", "Busy", "InACall", sequence="1", received_at=1.0) for i in range(users)
    ]
    await append_presence_batch(redis, Partitions(), changes, 10_000_000)
    env = dict(
        os.environ,
        REDIS_URL=redis_url,
        PUBLIC_BASE_URL="https://bridge.test",
        BRIDGE_SECRET_KEY=SECRET_KEY,
        AZURE_TENANT_ID="11111111-2222-3333-4444-555555555555",
        AZURE_CLIENT_ID="c",
        # A worker process also runs the reconciler, which needs these; nothing here reaches them.
        AZURE_CLIENT_SECRET="unused",
        STARFACE_BASE_URL="https://pbx.invalid",
        STARFACE_ADMIN_LOGIN="0000",
        STARFACE_ADMIN_PASSWORD="unused",
        WORKER_BATCH="50",
        LOG_LEVEL="WARNING",
    )
    proc = subprocess.Popen([sys.executable, "-m", "service", "serve", "--role", "worker"], env=env)
    try:
        # Freeze the worker until it is caught holding unacknowledged entries, then kill it.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"the worker subprocess exited with {proc.returncode}"
            time.sleep(0.002)
            proc.send_signal(signal.SIGSTOP)
            held = await _pending(redis)
            if held > 0:
                break
            proc.send_signal(signal.SIGCONT)
        else:
            pytest.fail("the worker subprocess never held pending entries")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    survivor = worker(redis, make_settings(WORKER_CLAIM_IDLE_MS=1, WORKER_BATCH=500))
    time.sleep(0.005)
    await survivor.drain()
    assert (await redis.xpending(keys.presence_stream(0), keys.WORKER_GROUP))["pending"] == 0
    assert survivor.consumer.reclaimed == held
    store = ObservedStore(redis)
    missing = [i for i in range(users) if await store.get(f"user-{i}") is None]
    assert missing == []
    assert await redis.xlen(keys.DEAD_LETTER_STREAM) == 0
    await redis.aclose()
