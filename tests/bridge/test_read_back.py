"""Read-back end to end: the bridge against the STARFACE sandbox's UCC client, a phone's DND key and
Java's XML-RPC extension types, over real sockets and TLS, on a real Valkey.

The keep-alive cadence (STARFACE_KEEPALIVE_SECONDS) is 1 s here, so every wait is a few seconds
of polling for a state, never a fixed sleep.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import REGISTRY

from service.bridge.decisions import DecisionLog
from service.bridge.due import Schedule
from service.bridge.identity import IdentityStore
from service.bridge.userstate import UserStateStore
from service.core.partitions import Partitions
from service.ops.explain import explain
from service.sandbox.demo import DemoWorld, Person

pytestmark = pytest.mark.slow

UCC_TEXT = "Verfügbar (UCC)"


@pytest.fixture
def world_factory(world_factory: Callable[..., Any]) -> Callable[..., Any]:
    """Worlds with a keepAlive (and so a read-back) every second, and the test's settings."""

    async def factory(overrides: dict[str, str], **options: Any) -> DemoWorld:
        world: DemoWorld = await world_factory(
            settings_overrides={"STARFACE_KEEPALIVE_SECONDS": "1", **overrides}, **options
        )
        return world

    return factory


async def history(world: DemoWorld, person: Person, kind: str) -> list[tuple[Any, str]]:
    entries = await world.starface_control("GET", f"/control/users/{person.login}/history")
    return [(entry["value"], entry["source"]) for entry in entries[kind]]


async def user_id(world: DemoWorld, person: Person) -> str:
    found = await IdentityStore(world._redis).user_for(person.login)
    assert found is not None
    return found


def rewrites(outcome: str) -> float:
    labels = {"field": "text", "outcome": outcome}
    return REGISTRY.get_sample_value("presence_bridge_starface_rewrites_total", labels) or 0.0


async def test_a_text_the_ucc_client_overwrites_is_restored_and_the_restores_are_capped(
    world_factory: Callable[..., Any],
) -> None:
    world: DemoWorld = await world_factory({"STARFACE_REWRITES_PER_HOUR": "3"})
    anna = world.people[0]
    capped_before = rewrites("capped")

    # A UCC client that writes its own text once a minute: the bridge puts its text back.
    started = time.monotonic()
    await world.starface_control(
        "PUT", f"/control/users/{anna.login}/ucc-client", {"everySeconds": 60, "text": UCC_TEXT}
    )

    async def ucc_wrote() -> tuple[bool, str]:
        return (UCC_TEXT, "ucc") in await history(world, anna, "statusText"), "no UCC write yet"

    await world.wait_for("the UCC client's text", ucc_wrote, within=10)
    await world.expect_starface(anna, False, "Verfügbar", within=10)
    assert time.monotonic() - started < 10
    entries = (await world.starface_control("GET", f"/control/users/{anna.login}/history"))["statusText"]
    assert [(e["value"], e["source"]) for e in entries[-2:]] == [(UCC_TEXT, "ucc"), ("Verfügbar", "uci")]
    restored_after = entries[-1]["at"] - entries[-2]["at"]
    print(f"UCC-overwritten text restored {restored_after:.2f} s after the overwrite (keep-alive 1 s)")
    # One keep-alive (1 s) and one reconcile; generous for a loaded machine.
    assert restored_after < 5

    # A UCC client that writes every second: the bridge restores at most 3 times an hour, then stops.
    await world.starface_control(
        "PUT", f"/control/users/{anna.login}/ucc-client", {"everySeconds": 1, "text": UCC_TEXT}
    )
    store = UserStateStore(world._redis)
    anna_id = await user_id(world, anna)

    async def capped() -> tuple[bool, str]:
        used = await store.rewrites_in_hour(anna_id, time.time())
        return rewrites("capped") > capped_before, f"{used} restores, none capped yet"

    await world.wait_for("a restore refused by the hourly bound", capped, within=20)
    assert await store.rewrites_in_hour(anna_id, time.time()) == 3
    ours = len([t for t in await history(world, anna, "statusText") if t[1] == "uci"])
    ucc = len([t for t in await history(world, anna, "statusText") if t[1] == "ucc"])

    async def more_ucc_writes() -> tuple[bool, str]:
        now = len([t for t in await history(world, anna, "statusText") if t[1] == "ucc"])
        return now >= ucc + 4, f"{now - ucc} more UCC writes"

    await world.wait_for("four more UCC writes", more_ucc_writes, within=10)
    assert len([t for t in await history(world, anna, "statusText") if t[1] == "uci"]) == ours
    assert await world.starface_state(anna) == (False, UCC_TEXT)
    text = await explain(world._redis, anna.login, rewrites_per_hour=3, dnd_policy="respect")
    assert "restores        3 in the last hour (at most 3 per STARFACE_REWRITES_PER_HOUR)" in text
    assert "status text differ from what the bridge applied" in text
    assert "capped: 3 restore(s) in the last hour" in text


async def test_phone_dnd_is_respected_until_the_next_teams_change(world_factory: Callable[..., Any]) -> None:
    world: DemoWorld = await world_factory({"STARFACE_DND_POLICY": "respect"})
    anna = world.people[0]
    store = UserStateStore(world._redis)
    anna_id = await user_id(world, anna)
    await world.starface_control("PUT", f"/control/users/{anna.login}/dnd", {"enabled": True})

    async def respected() -> tuple[bool, str]:
        bridge = await store.bridge(anna_id)
        return bridge.override_dnd is True, f"override {bridge.override_dnd}"

    await world.wait_for("the user's own DND recorded", respected, within=10)
    first_seen = (await store.bridge(anna_id)).seen_at or 0.0

    async def read_again() -> tuple[bool, str]:
        seen = (await store.bridge(anna_id)).seen_at or 0.0
        return seen >= first_seen + 2, f"last read {seen - first_seen:.1f}s after the first"

    # More read-backs, and a reconcile, while Teams stays Available: DND stays on.
    await world.wait_for("two more read-backs", read_again, within=10)
    decisions = DecisionLog(world._redis)
    before = len(await decisions.recent(anna_id, 100))
    assert world.settings is not None
    await Schedule(world._redis, Partitions(world.settings.redis_partitions)).mark([anna_id], time.time())

    async def reconciled() -> tuple[bool, str]:
        count = len(await decisions.recent(anna_id, 100))
        return count > before, f"{count - before} new decisions"

    await world.wait_for("one more reconcile", reconciled, within=10)
    assert await world.starface_state(anna) == (True, "Verfügbar")
    assert "switched DND on themselves: respected" in (await decisions.recent(anna_id, 1))[0].rule
    assert (await history(world, anna, "dnd"))[-1] == (True, "phone")
    text = await explain(world._redis, anna.login, dnd_policy="respect")
    assert "user's own DND  on, switched by the user and respected until their Teams state changes" in text
    assert "policy respect (STARFACE_DND_POLICY)" in text

    # Her next Teams change ends it: the mapping applies again.
    await world.set_teams(anna, "Away", "Away")
    await world.expect_starface(anna, False, "Abwesend", within=10)
    assert (await history(world, anna, "dnd"))[-1] == (False, "uci")
    assert (await store.bridge(anna_id)).override_dnd is None


def overrides(policy: str) -> float:
    labels = {"policy": policy}
    return REGISTRY.get_sample_value("presence_bridge_starface_dnd_overrides_total", labels) or 0.0


def overrides_counted() -> float:
    return overrides("respect") + overrides("enforce")


async def test_the_bridges_own_writes_are_never_taken_for_the_users(
    world_factory: Callable[..., Any],
) -> None:
    # Read-backs every second while the bridge switches DND and text back and forth.
    world: DemoWorld = await world_factory({"STARFACE_DND_POLICY": "enforce"})
    anna = world.people[0]
    counted = overrides_counted()
    for _ in range(4):
        await world.set_teams(anna, "Busy", "InACall")
        await world.expect_starface(anna, True, "Im Gespräch", within=10)
        await world.set_teams(anna, "Available", "Available")
        await world.expect_starface(anna, False, "Verfügbar", within=10)
    assert overrides_counted() == counted
    sources = {source for _, source in await history(world, anna, "dnd")}
    assert sources == {"uci"}
    assert await UserStateStore(world._redis).rewrites_in_hour(await user_id(world, anna), time.time()) == 0


async def test_phone_dnd_is_switched_back_when_enforced(world_factory: Callable[..., Any]) -> None:
    world: DemoWorld = await world_factory({"STARFACE_DND_POLICY": "enforce"})
    anna = world.people[0]
    enforced = REGISTRY.get_sample_value(
        "presence_bridge_starface_dnd_overrides_total", {"policy": "enforce"}
    )
    await world.starface_control("PUT", f"/control/users/{anna.login}/dnd", {"enabled": True})
    await world.expect_starface(anna, False, "Verfügbar", within=10)
    assert (await history(world, anna, "dnd"))[-2:] == [(True, "phone"), (False, "uci")]
    labels = {"policy": "enforce"}
    assert (
        REGISTRY.get_sample_value("presence_bridge_starface_dnd_overrides_total", labels)
        == (enforced or 0) + 1
    )
    assert (await UserStateStore(world._redis).bridge(await user_id(world, anna))).override_dnd is None


async def test_the_bridge_works_against_java_extension_types_on_the_wire(
    world_factory: Callable[..., Any],
) -> None:
    world: DemoWorld = await world_factory({}, starface_options={"wire_types": "extensions"})
    anna = world.people[0]
    assert await world.starface_control("GET", "/control/modes") == {"wireTypes": "extensions"}

    # Call events with <ex:i8> timestamps and <nil/> names still make her Busy in Teams.
    call = await world.place_call(anna)
    await world.answer(call)
    await world.expect_teams(anna, "Busy/InACall", within=10)
    deliveries = await world.starface_control("GET", f"/control/deliveries?login={anna.login}")
    assert deliveries
    assert all(d["ok"] for d in deliveries)
    await world.hang_up(call)
    await world.expect_teams(anna, "Available/Available", within=15)

    # getUserState answers with untyped strings and nil still parse: DND and text are read back.
    await world.starface_control("PUT", f"/control/users/{anna.login}/dnd", {"enabled": True})
    store = UserStateStore(world._redis)
    anna_id = await user_id(world, anna)

    async def read_back() -> tuple[bool, str]:
        bridge = await store.bridge(anna_id)
        return bridge.seen_dnd is True and bridge.override_dnd is True, f"seen DND {bridge.seen_dnd}"

    await world.wait_for("her phone DND read back", read_back, within=10)
    assert (await store.bridge(anna_id)).seen_text == "Verfügbar"
