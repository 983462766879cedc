"""Never silently stop: a silent subscription is found, counted, recreated and its users polled;
poll mode runs the bridge without any subscription.  Whole bridge, both sandboxes, real Valkey."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from service.core import keys
from service.core.partitions import Partitions
from service.ops import status as ops_status
from service.sandbox.demo import SERVICE_ACCOUNT, DemoWorld

pytestmark = pytest.mark.slow

WATCH = {"WATCH_SECONDS": "2", "MISSED_GRACE_SECONDS": "3", "POLL_SECONDS": "1"}


def reads(reason: str) -> float:
    return REGISTRY.get_sample_value("presence_bridge_presence_reads_total", {"reason": reason}) or 0.0


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


async def queued(world: DemoWorld, redis: aioredis.Redis) -> int:
    """Entries in every partition of the presence stream."""
    assert world.settings is not None
    streams = Partitions(world.settings.redis_partitions).presence_streams()
    return sum([await redis.xlen(stream) for stream in streams])


async def active_subscriptions(world: DemoWorld) -> list[dict[str, Any]]:
    listed = await world.graph_control("GET", "/subscriptions")
    return [s for s in listed["value"] if s["active"]]


async def test_a_silent_subscription_is_found_counted_recreated_and_polled_until_it_delivers(
    world_factory: Callable[..., Any], redis: aioredis.Redis
) -> None:
    world: DemoWorld = await world_factory(users=2, settings_overrides=WATCH)
    assert world.settings is not None
    anna, ben = world.people
    account = SERVICE_ACCOUNT.lower()
    await world.set_teams(anna, "Busy", "InACall")
    await world.expect_starface(anna, True, "Im Gespräch")  # notifications flow
    [silent] = await active_subscriptions(world)
    await world.graph_control("POST", f"/subscriptions/{silent['id']}/silence", {})

    await world.set_teams(anna, "Available", "Available")
    changed = time.monotonic()
    # Bound: the next watch read (WATCH_SECONDS) plus a reconcile.
    await world.expect_starface(anna, False, "Verfügbar", within=2 + 2)
    applied = time.monotonic() - changed

    async def counted() -> tuple[bool, str]:
        missed = await redis.hget(keys.MISSED_CHANGES, account)
        return missed == "1", f"missed changes {missed!r}"

    # Bound: the read (WATCH_SECONDS) plus the grace (MISSED_GRACE_SECONDS) plus one poll tick.
    await world.wait_for("the missed change counted", counted, 2 + 3 + 1 + 2)
    detected = time.monotonic() - changed
    report = await ops_status.collect(redis, world.settings)
    alert = [p for p in report["problems"] if "stopped delivering" in p]
    assert alert, report["problems"]
    assert silent["id"] in alert[0]
    assert account in alert[0]
    assert "PRESENCE_SOURCE=poll" in alert[0]  # says what to do
    assert not ops_status.healthy(report)
    text = ops_status.render(report)
    assert f"ALERT {account}: subscription {silent['id']} silent since" in text
    assert f"missed changes (ever): {account} 1" in text
    assert REGISTRY.get_sample_value("presence_bridge_missed_changes_total", {"account": account}) == 1

    async def recreated() -> tuple[bool, str]:
        subs = await active_subscriptions(world)
        return [s["id"] != silent["id"] for s in subs] == [True], str([s["id"] for s in subs])

    await world.wait_for("a new subscription instead of the silent one", recreated, 5)
    before = reads("silent")

    async def polling() -> tuple[bool, str]:
        return reads("silent") > before, f"{reads('silent')} reads of silent users"

    await world.wait_for("the silent subscription's users polled", polling, 3)

    # The new subscription delivers: Ben's change comes as a notification, and polling stops.
    await world.set_teams(ben, "DoNotDisturb", "DoNotDisturb")
    await world.expect_starface(ben, True, "Nicht Stören", within=5)

    async def recovered() -> tuple[bool, str]:
        left = await redis.hgetall(keys.SILENT_SUBSCRIPTIONS)
        return not left, str(left)

    await world.wait_for("the alert cleared", recovered, 3)
    report = await ops_status.collect(redis, world.settings)
    assert not [p for p in report["problems"] if "stopped delivering" in p]
    assert report["subscriptions"]["missed_changes"] == {account: 1}  # the count stays for the record
    after = reads("silent")
    await asyncio.sleep(3 * float(WATCH["POLL_SECONDS"]))
    assert reads("silent") == after
    assert await redis.hget(keys.MISSED_CHANGES, account) == "1"  # Ben's change was not missed
    print(f"silent: STARFACE after {applied:.1f} s, counted as missed after {detected:.1f} s")


async def test_a_quiet_subscription_is_not_silent(
    world_factory: Callable[..., Any], redis: aioredis.Redis
) -> None:
    # Changes delivered as notifications, watch reads in between: nothing is counted as missed.
    world: DemoWorld = await world_factory(users=2, settings_overrides=WATCH)
    anna, ben = world.people
    for availability, activity, dnd, text in (
        ("Busy", "InACall", True, "Im Gespräch"),
        ("Available", "Available", False, "Verfügbar"),
        ("DoNotDisturb", "Presenting", True, "Nicht Stören - In einer Präsentation"),
    ):
        await world.set_teams(anna, availability, activity)
        await world.expect_starface(anna, dnd, text)
    watched = reads("watch")

    async def watched_twice() -> tuple[bool, str]:
        return reads("watch") >= watched + 2, f"{reads('watch')} watch reads"

    await world.wait_for("two more watch rounds", watched_twice, 2 * 2 + 3)
    await asyncio.sleep(3)  # the grace time of any suspect
    assert await redis.hgetall(keys.MISSED_CHANGES) == {}
    assert await redis.hgetall(keys.SILENT_SUBSCRIPTIONS) == {}
    assert await world.starface_state(ben) == (False, "Verfügbar")


async def test_poll_mode_bridges_teams_to_starface_without_any_subscription(
    world_factory: Callable[..., Any], redis: aioredis.Redis
) -> None:
    world: DemoWorld = await world_factory(
        users=2,
        settings_overrides={"PRESENCE_SOURCE": "poll", "POLL_SECONDS": "1", "GRAPH_SERVICE_ACCOUNTS": ""},
    )
    assert world.settings is not None
    anna, ben = world.people
    await world.set_teams(anna, "Busy", "InACall")
    changed = time.monotonic()
    await world.expect_starface(anna, True, "Im Gespräch", within=1 + 2)  # POLL_SECONDS plus a reconcile
    print(f"poll mode: STARFACE DND {time.monotonic() - changed:.1f} s after the Teams change")
    assert await active_subscriptions(world) == []
    assert [d for d in (await world.graph_control("GET", "/deliveries?since=0"))["value"]] == []

    # Unchanged presence queues nothing, however many rounds run.
    length = await queued(world, redis)
    polled = reads("poll")

    async def rounds() -> tuple[bool, str]:
        return reads("poll") >= polled + 3, f"{reads('poll')} poll reads"

    await world.wait_for("three more poll rounds", rounds, 3 * 1 + 3)
    assert await queued(world, redis) == length
    report = await ops_status.collect(redis, world.settings)
    assert report["subscriptions"]["poll"]["users"] == "2"
    unrelated = [p for p in report["problems"] if "GRAPH_SERVICE_ACCOUNTS" in p or "poll" in p]
    assert not unrelated, report["problems"]
    text = ops_status.render(report)
    assert "poll mode: 2 users every 1 s, 1 request(s) a round" in text
    assert "GRAPH_SERVICE_ACCOUNTS" not in text

    await world.set_teams(ben, "DoNotDisturb", "DoNotDisturb")
    await world.expect_starface(ben, True, "Nicht Stören", within=1 + 2)
    assert await queued(world, redis) == length + 1  # only the change
