"""``explain`` and ``mapping preview`` read the real stores and change nothing."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import pytest
import redis.asyncio as aioredis

from service.bridge.decisions import DecisionLog, DecisionRecord
from service.bridge.identity import IdentityStore
from service.bridge.mapping import default_mapping, parse_mapping
from service.bridge.observed import ObservedStore
from service.bridge.userstate import UserStateStore
from service.core import keys
from service.core.settings import Settings
from service.graph.presence import PresenceChange, TeamsPresence
from service.ops.explain import UnknownPerson, explain, find, preview
from service.ops.status import collect, healthy, render
from service.starface.directory import DirectoryStore, Selection
from service.starface.rest import StarfaceUser
from tests.ops.conftest import Running

USER = "eeee0000-0000-4000-8000-000000000005"
ANNA = StarfaceUser(1, "0001", "Anna.Alt@example.com", "Anna", "Alt", ("Vertrieb", "7"))


async def seed(redis: aioredis.Redis) -> None:
    await DirectoryStore(redis).save(Selection((ANNA,), ()), refreshed_at=1.0)
    await IdentityStore(redis).replace({USER: "0001"})
    await ObservedStore(redis).apply(PresenceChange(USER, "Busy", "InACall", sequence="5", received_at=10.0))
    await UserStateStore(redis).update_bridge(
        USER, applied_dnd=True, applied_text="Im Gespräch", own_teams=TeamsPresence("Busy", "InACall")
    )
    await DecisionLog(redis).append(
        DecisionRecord(
            at=11.0,
            user_id=USER,
            login="0001",
            trigger="presence",
            inputs={"teams": "Busy/InACall"},
            rule="row Busy/InACall: DND on",
            actions=["STARFACE DND on"],
            results=["ok"],
            latency_ms=42.0,
        )
    )


async def test_explain_by_login_and_by_email(redis_client: aioredis.Redis) -> None:
    await seed(redis_client)
    for who in ("0001", "anna.alt@EXAMPLE.com"):
        text = await explain(redis_client, who, now=20.0)
        assert "STARFACE login 0001, Anna Alt <Anna.Alt@example.com>" in text
        assert USER in text
        assert "groups         Vertrieb, 7" in text
        assert "Teams presence  Busy/InACall (seq 5" in text
        assert "applied         DND on, status text 'Im Gespräch'" in text
        assert "STARFACE DND on -> ok" in text
        assert "42 ms" in text


async def test_explain_unknown_person(redis_client: aioredis.Redis) -> None:
    await seed(redis_client)
    with pytest.raises(UnknownPerson, match=r"nobody@example\.com"):
        await find(redis_client, "nobody@example.com")


async def test_preview_shows_what_a_mapping_would_change_and_changes_nothing(
    redis_client: aioredis.Redis,
) -> None:
    await seed(redis_client)
    assert await preview(redis_client, default_mapping("de"), now=20.0) == [
        "    0001  Teams Busy/InACall: no change"
    ]
    quieter = parse_mapping(
        'base = "de"\n[rows]\n"Busy/InACall" = { dnd = false, text = "Telefoniert (Teams)" }'
    )
    lines = await preview(redis_client, quieter, now=20.0)
    assert lines == [
        "    0001  Teams Busy/InACall: DND on -> off; text 'Im Gespräch' -> 'Telefoniert (Teams)'"
    ]
    record = await UserStateStore(redis_client).bridge(USER)
    assert (record.applied_dnd, record.applied_text) == (True, "Im Gespräch")


async def test_status_reports_problems_an_operator_must_see(
    redis_client: aioredis.Redis, make_settings: Callable[..., Settings], running: Running
) -> None:
    settings = make_settings(GRAPH_SERVICE_ACCOUNTS="sync@example.com")
    await running(redis_client)
    report = await collect(redis_client, settings)
    assert healthy(report), report["problems"]
    await seed(redis_client)
    await UserStateStore(redis_client).update_bridge(USER, failures=3, last_error="STARFACE DND on: refused")
    await redis_client.xadd(
        keys.DEAD_LETTER_STREAM, {"stream": "presence", "reason": "bad entry", "deliveries": "5"}
    )
    report = await collect(redis_client, settings)
    assert not healthy(report)
    text = render(report)
    assert "sync@example.com: no subscription" in text
    assert "dead letters: 1" in text
    assert "presence: bad entry after 5 tries" in text
    assert "login 0001: STARFACE DND on: refused" in text
    assert "STARFACE directory: 1 user(s) selected" in text


@pytest.mark.parametrize(
    ("broken", "problem"),
    [
        (lambda r: r.delete(keys.LIVE_WORKERS), "no worker is alive"),
        (lambda r: r.zadd(keys.LIVE_WORKERS, {"worker-1": time.time() - 600}), "no worker is alive"),
        (lambda r: r.delete(keys.SCHEDULER_LEASE), "no scheduler holds the lease"),
        (lambda r: r.delete(keys.SCHEDULER_STATUS), "the scheduler never completed a pass"),
        (
            lambda r: r.hset(keys.SCHEDULER_STATUS, "last_pass_at", str(time.time() - 3600)),
            "the last scheduler pass is 60 min old",
        ),
        (lambda r: r.delete(keys.STARFACE_DIRECTORY_META), "the STARFACE directory was never read"),
        (
            lambda r: r.hset(keys.STARFACE_DIRECTORY_META, "refreshed_at", repr(time.time() - 7200)),
            "the STARFACE directory was last read 120 min ago",
        ),
    ],
)
async def test_status_is_unhealthy_for_each_missing_part(
    redis_client: aioredis.Redis,
    make_settings: Callable[..., Settings],
    running: Running,
    broken: Callable[[aioredis.Redis], Awaitable[object]],
    problem: str,
) -> None:
    settings = make_settings(GRAPH_SERVICE_ACCOUNTS="sync@example.com")
    await running(redis_client)
    await broken(redis_client)
    report = await collect(redis_client, settings)
    assert not healthy(report)
    [only] = report["problems"]
    assert only.startswith(problem)
    assert problem in render(report)


async def test_status_without_service_accounts_is_unhealthy(
    redis_client: aioredis.Redis, make_settings: Callable[..., Settings], running: Running
) -> None:
    await running(redis_client)
    report = await collect(redis_client, make_settings())
    assert report["problems"] == ["no service account can hold a subscription: set GRAPH_SERVICE_ACCOUNTS"]


async def test_explain_shows_the_read_back_the_dnd_policy_and_the_restores(
    redis_client: aioredis.Redis,
) -> None:
    await seed(redis_client)
    store = UserStateStore(redis_client)
    text = await explain(redis_client, "0001", now=20.0, dnd_policy="respect", rewrites_per_hour=6)
    assert "STARFACE shows  not read back yet" in text
    assert "user's own DND  none in force; policy respect (STARFACE_DND_POLICY)" in text
    assert "restores        0 in the last hour (at most 6 per STARFACE_REWRITES_PER_HOUR)" in text

    await store.update_bridge(USER, written_at=12.0)
    assert await store.record_seen(USER, sent_at=15.0, dnd=False, text="Im Gespräch (UCC)", now=15.1) == "due"
    await store.update_bridge(
        USER, override_dnd=False, override_since=15.0, override_teams=TeamsPresence("Busy", "InACall")
    )
    await store.take_rewrite(USER, 16.0, 6)
    text = await explain(redis_client, "0001", now=20.0, dnd_policy="enforce", rewrites_per_hour=6)
    assert (
        "STARFACE shows  DND off, status text 'Im Gespräch (UCC)' (read 5s ago); "
        "DND and status text differ from what the bridge applied"
    ) in text
    assert (
        "user's own DND  off, switched by the user and respected until their Teams state changes "
        "from Busy/InACall" in text
    )
    assert "policy enforce (STARFACE_DND_POLICY)" in text
    assert "restores        1 in the last hour (at most 6" in text

    await store.update_bridge(USER, written_at=18.0)
    text = await explain(redis_client, "0001", now=20.0)
    assert "(read 5s ago); the bridge wrote since: the next read-back tells" in text
    assert "policy: see STARFACE_DND_POLICY" in text
