"""The whole bridge between both sandboxes, over real sockets and TLS, on a real Valkey."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from service.core import keys
from service.core.settings import FIELDS
from service.sandbox.demo import DemoWorld, Person
from tests.chaos.scenarios import bridge_process, stop_processes

pytestmark = pytest.mark.slow

# The tests a three-master Redis Cluster must pass as well as a single server.
BOTH_STORES = pytest.mark.parametrize("store", ["single", "cluster"], indirect=True)


async def dnd_history(world: DemoWorld, person: Person) -> list[bool]:
    history = await world.starface_control("GET", f"/control/users/{person.login}/history")
    return [bool(entry["value"]) for entry in history["dnd"]]


@BOTH_STORES
async def test_teams_call_sets_dnd_and_status_text_and_hang_up_clears(
    world_factory: Callable[..., Any],
) -> None:
    world: DemoWorld = await world_factory(users=2)
    anna, ben = world.people
    await world.set_teams(anna, "Busy", "InACall")
    await world.expect_starface(anna, True, "Im Gespräch")
    await world.set_teams(anna, "Available", "Available")
    await world.expect_starface(anna, False, "Verfügbar")
    assert await world.starface_state(ben) == (False, "Verfügbar")  # nobody else touched
    assert await world.teams_presence(anna) == "Available/Available"  # the bridge set no Teams session


@BOTH_STORES
async def test_starface_call_shows_busy_in_teams_and_hang_up_clears(
    world_factory: Callable[..., Any],
) -> None:
    world: DemoWorld = await world_factory(users=2)
    ben = world.people[1]
    call = await world.place_call(ben)
    await asyncio.sleep(1.0)
    assert await world.teams_presence(ben) == "Available/Available"  # ringing alone does not count
    await world.answer(call)
    await world.expect_teams(ben, "Busy/InACall")
    # Graph reports the bridge's own session back; it must never become STARFACE DND.
    await asyncio.sleep(1.5)
    assert await world.starface_state(ben) == (False, "Verfügbar")
    assert not any(await dnd_history(world, ben))  # DND was never switched on
    await world.hang_up(call)
    await world.expect_teams(ben, "Available/Available")
    assert not any(await dnd_history(world, ben))  # DND was never switched on


async def test_a_call_longer_than_the_presence_lifetime_stays_busy(world_factory: Callable[..., Any]) -> None:
    # Bridge and Graph sandbox share one clock, run 30 times faster: 5 minutes pass in 10 s.
    world: DemoWorld = await world_factory(users=1, graph_clock=True)
    anna = world.people[0]
    call = await world.place_call(anna)
    await world.answer(call)
    await world.expect_teams(anna, "Busy/InACall")
    await world.graph_control("PUT", "/clock", {"speed": 30})
    started = world.graph.clock.now() if world.graph else 0.0
    while world.graph and world.graph.clock.now() - started < 12 * 60:  # 12 sandbox minutes
        assert await world.teams_presence(anna) == "Busy/InACall"
        await asyncio.sleep(0.5)
    await world.graph_control("PUT", "/clock", {"speed": 1})
    await world.hang_up(call)

    async def not_busy() -> tuple[bool, str]:
        seen = await world.teams_presence(anna)
        return seen != "Busy/InACall", seen

    await world.wait_for("Anna no longer Busy in Teams after hanging up", not_busy, 30)


@BOTH_STORES
async def test_a_late_redelivery_without_sequence_number_is_corrected_within_seconds(
    world_factory: Callable[..., Any],
) -> None:
    # The sandbox sends Microsoft's documented payload: no sequenceNumber to order by.
    world: DemoWorld = await world_factory(users=1)
    anna = world.people[0]
    await world.set_teams(anna, "Busy", "InACall")
    await world.expect_starface(anna, True, "Im Gespräch")
    await world.set_teams(anna, "Available", "Available")
    await world.expect_starface(anna, False, "Verfügbar")
    # Graph retries the delivery of the Busy notification late, after the newer one.
    await world.graph_control("POST", f"/users/{world.entra_ids[anna.login]}/redeliver", {"back": 2})
    started = time.monotonic()
    await world.expect_starface(anna, True, "Im Gespräch", within=5)  # taken by arrival ...
    await world.expect_starface(anna, False, "Verfügbar", within=5)  # ... and confirmed by a read
    took = time.monotonic() - started
    print(f"corrected {took:.1f} s after the late redelivery")
    assert took < 5


async def test_a_long_retry_after_on_set_presence_never_leaves_a_stale_busy(
    world_factory: Callable[..., Any],
) -> None:
    world: DemoWorld = await world_factory(users=1, graph_clock=True)
    anna = world.people[0]
    user_id = world.entra_ids[anna.login]
    await world.graph_control(
        "POST",
        "/faults",
        {"method": "POST", "path": "/v1.0/users/*/presence/setPresence", "status": 429, "retryAfter": 120},
    )
    call = await world.place_call(anna)
    await world.answer(call)

    async def throttled() -> tuple[bool, str]:
        faults = (await world.graph_control("GET", "/faults"))["value"]
        return not faults, f"{len(faults)} fault(s) left"

    await world.wait_for("the bridge's setPresence answered 429", throttled, 15)
    assert world.redis_url is not None
    redis = aioredis.Redis.from_url(world.redis_url)
    try:
        # The reconcile gives the user back at once, due when Graph said, instead of sleeping
        # inside its claim on the user.
        async def given_back() -> tuple[bool, str]:
            held = await redis.zscore(keys.reconcile_inflight(0), user_id)
            due = await redis.zscore(keys.reconcile_due(0), user_id)
            return held is None and due is not None, f"in flight {held}, due {due}"

        await world.wait_for("the throttled user released", given_back, 10)
        due = await redis.zscore(keys.reconcile_due(0), user_id)
        assert world.graph is not None
        assert due is not None
        assert due >= world.graph.clock.now() + 100
    finally:
        await redis.aclose()
    await world.hang_up(call)  # during the 120 s the bridge was asked to wait
    await world.graph_control("PUT", "/clock", {"speed": 30})  # 120 s pass in 4 s
    await asyncio.sleep(8)
    await world.graph_control("PUT", "/clock", {"speed": 1})
    history = (await world.graph_control("GET", f"/users/{user_id}/presence-history"))["value"]
    # The call ended before Graph let the bridge back in: Anna must never have shown Busy.
    assert [f"{e['availability']}/{e['activity']}" for e in history if e["availability"] == "Busy"] == []
    assert await world.teams_presence(anna) == "Available/Available"


async def test_every_user_converges_within_seconds_after_a_starface_outage(
    world_factory: Callable[..., Any],
) -> None:
    world: DemoWorld = await world_factory(users=8)
    await world.starface_control("PUT", "/control/faults", {"down": "refuse"})
    for person in world.people:  # everyone's meeting starts while the PBX refuses connections
        await world.set_teams(person, "Busy", "InACall")
    await asyncio.sleep(30)
    await world.starface_control("PUT", "/control/faults", {"down": "none"})
    back = time.monotonic()
    for person in world.people:
        await world.expect_starface(person, True, "Im Gespräch", within=10 - (time.monotonic() - back))
    # Per-user backoff alone would have left users waiting up to a minute after the PBX was back.
    took = time.monotonic() - back
    print(f"converged {took:.1f} s after STARFACE was back")
    assert took < 10


async def test_every_call_reaches_teams_within_seconds_after_a_graph_outage(
    world_factory: Callable[..., Any],
) -> None:
    world: DemoWorld = await world_factory(users=5)
    fault = {"method": "POST", "path": "/v1.0/users/*/presence/*", "status": 503, "count": 100000}
    await world.graph_control("POST", "/faults", fault)
    for person in world.people:  # everyone picks up the phone while Graph answers 503
        await world.answer(await world.place_call(person))
    await asyncio.sleep(30)
    await world.graph_control("DELETE", "/faults")
    back = time.monotonic()
    for person in world.people:
        await world.expect_teams(person, "Busy/InACall", within=10 - (time.monotonic() - back))
    took = time.monotonic() - back
    print(f"converged {took:.1f} s after Graph was back")
    assert took < 10


@BOTH_STORES
async def test_sigkilled_worker_mid_burst_loses_nothing_and_never_flaps(
    world_factory: Callable[..., Any],
) -> None:
    from service.core import keys
    from service.core.storage import connect_worker

    world: DemoWorld = await world_factory(users=5, roles=("web", "scheduler", "worker"))
    # Hand the work over to worker processes: stop the in-process worker first.
    in_process = world.runtimes.pop()
    await in_process.close()
    first = bridge_process(world, "worker")
    second: subprocess.Popen[bytes] | None = None
    assert world.redis_url is not None
    redis = connect_worker(world.redis_url)
    try:
        await asyncio.sleep(2.0)  # the worker process is up and consuming
        # A burst: everybody joins a Teams call, then ends it.
        for person in world.people:
            await world.set_teams(person, "Busy", "InACall")
        assert world.settings is not None
        streams = [keys.presence_stream(p) for p in range(world.settings.redis_partitions)]
        for _ in range(100):
            pending = [await redis.xpending(s, keys.WORKER_GROUP) for s in streams]
            if any(p["pending"] for p in pending):
                break
            await asyncio.sleep(0.01)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        for person in world.people:
            await world.set_teams(person, "Available", "Available")
        second = bridge_process(world, "worker")
        for person in world.people:
            await world.expect_starface(person, False, "Verfügbar", within=60)
        # What the user sees on the phone only ever moved forward: off -> on -> off at most.
        for person in world.people:
            history = await dnd_history(world, person)
            changes = [v for i, v in enumerate(history) if i == 0 or v != history[i - 1]]
            assert changes in ([False], [False, True, False]), (person.login, history)
        assert await redis.xlen(keys.DEAD_LETTER_STREAM) == 0
    finally:
        stop_processes(first, second)
        await redis.aclose()


def test_the_demo_runs_and_every_expectation_holds(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in {f.env for f in FIELDS}}
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "service", "demo", "--state-dir", str(tmp_path / "demo")],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Every expectation held" in result.stdout
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < 60


async def test_the_last_worker_to_stop_logs_the_uci_sessions_out(world_factory: Callable[..., Any]) -> None:
    world: DemoWorld = await world_factory(users=2, roles=("web", "scheduler", "worker", "worker"))
    anna = world.people[0]
    session = await world.starface_control("GET", f"/control/users/{anna.login}/session")
    assert session["id"]
    second_worker = world.runtimes.pop()
    await second_worker.close()  # another worker is still running: the sessions stay
    assert (await world.starface_control("GET", f"/control/users/{anna.login}/session"))["id"] == session[
        "id"
    ]
    last_worker = world.runtimes.pop()
    await last_worker.close()  # the last one out logs everyone out
    with pytest.raises(RuntimeError, match="404"):
        await world.starface_control("GET", f"/control/users/{anna.login}/session")
