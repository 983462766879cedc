"""The reconciler between recording edges, on the real worker, streams and Valkey."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis

from service.bridge.decisions import DecisionLog
from service.bridge.mapping import parse_mapping
from service.core import keys
from service.core.settings import Settings
from service.graph.presence import TeamsPresence
from tests.bridge.harness import FakeClock, Harness

USER, LOGIN = "aaaa0000-0000-4000-8000-000000000001", "0001"
AVAILABLE = TeamsPresence("Available", "Available")
TEAMS_CALL = TeamsPresence("Busy", "InACall")
AWAY = TeamsPresence("Away", "Away")
DND = TeamsPresence("DoNotDisturb", "DoNotDisturb")


async def harness(
    redis: aioredis.Redis, make_settings: Callable[..., Settings], clock: FakeClock, **options: Any
) -> Harness:
    h = Harness(redis, make_settings(WORKER_CLAIM_IDLE_MS=1), clock, **options)
    await h.link(USER, LOGIN)
    h.graph.set_own(USER, AVAILABLE)
    h.graph.publish(USER)
    await h.pump()
    return h


async def test_teams_call_sets_dnd_and_text_then_clears(
    redis_client: aioredis.Redis, make_settings: Callable[..., Settings], fake_clock: FakeClock
) -> None:
    h = await harness(redis_client, make_settings, fake_clock)
    assert h.starface.state[LOGIN] == (False, "Verfügbar")
    h.graph.set_own(USER, TEAMS_CALL)
    await h.pump()
    assert h.starface.state[LOGIN] == (True, "Im Gespräch")
    h.graph.set_own(USER, AVAILABLE)
    await h.pump()
    assert h.starface.state[LOGIN] == (False, "Verfügbar")
    assert h.graph.calls == []  # no STARFACE call: the bridge never touched Teams


async def test_starface_call_shows_busy_in_teams_without_echo(
    redis_client: aioredis.Redis, make_settings: Callable[..., Settings], fake_clock: FakeClock
) -> None:
    h = await harness(redis_client, make_settings, fake_clock)
    writes_before = list(h.starface.writes)
    await h.call_event(LOGIN, "call-1", "RINGING")
    await h.pump()
    assert h.graph.sessions == {}  # ringing does not count by default
    await h.call_event(LOGIN, "call-1", "CONNECTED")
    await h.pump()
    assert h.graph.sessions[USER] == TEAMS_CALL
    assert h.graph.observed(USER) == TEAMS_CALL  # Graph shows the bridge's own session ...
    assert h.starface.writes == writes_before  # ... and its echo never set STARFACE DND
    await h.call_event(LOGIN, "call-1", "HANGUP")
    await h.pump()
    assert USER in h.graph.sessions  # debounce: a transfer must not flap Teams
    fake_clock.advance(6)
    await h.pump()
    assert USER not in h.graph.sessions
    assert h.starface.writes == writes_before
    assert h.starface.state[LOGIN] == (False, "Verfügbar")


async def test_long_call_keeps_the_session_alive(
    redis_client: aioredis.Redis, make_settings: Callable[..., Settings], fake_clock: FakeClock
) -> None:
    h = await harness(redis_client, make_settings, fake_clock, presence_seconds=300)
    await h.call_event(LOGIN, "long", "CONNECTED")
    await h.pump()
    for _ in range(24):  # more than an hour in steps shorter than the refresh margin
        fake_clock.advance(170)
        await h.pump()
        record = await h.reconciler.state.bridge(USER)
        assert record.session_expires_at is not None
        assert record.session_expires_at > fake_clock.now + 60  # never near its expiry
    sets = [c for c in h.graph.calls if c[1].startswith("set")]
    assert 12 <= len(sets) <= 14  # one refresh per 3 minutes, not one per pass


async def test_dnd_in_teams_wins_over_the_bridge_session(
    redis_client: aioredis.Redis, make_settings: Callable[..., Settings], fake_clock: FakeClock
) -> None:
    h = await harness(redis_client, make_settings, fake_clock)
    await h.call_event(LOGIN, "c", "CONNECTED")
    await h.pump()
    h.graph.set_own(USER, DND)  # a user-set DND dominates the bridge's Busy: it must map
    await h.pump()
    assert h.starface.state[LOGIN] == (True, "Nicht Stören")


async def test_burst_collapses_to_one_write(
    redis_client: aioredis.Redis, make_settings: Callable[..., Settings], fake_clock: FakeClock
) -> None:
    h = await harness(redis_client, make_settings, fake_clock)
    before = len(h.starface.writes)
    for presence in [TEAMS_CALL, AWAY, DND, AVAILABLE, AWAY, TEAMS_CALL]:
        h.graph.set_own(USER, presence)
    await h.deliver()
    await h.worker.consumer.drain()
    assert await h.reconciler.drain() == 1
    assert h.starface.writes[before:] == [(LOGIN, "dnd", True), (LOGIN, "text", "Im Gespräch")]


async def test_starface_outage_backs_off_and_converges(
    redis_client: aioredis.Redis, make_settings: Callable[..., Settings], fake_clock: FakeClock
) -> None:
    h = await harness(redis_client, make_settings, fake_clock)
    h.starface.down = True
    h.graph.set_own(USER, TEAMS_CALL)
    await h.pump()
    record = await h.reconciler.state.bridge(USER)
    assert record.failures == 1
    assert "test outage" in (record.last_error or "")
    due = await h.reconciler.schedule.due()
    assert fake_clock.now < due[USER] <= fake_clock.now + 3  # first retry after about 2 s
    fake_clock.advance(3)
    await h.pump()
    assert (await h.reconciler.state.bridge(USER)).failures == 2
    h.starface.down = False
    fake_clock.advance(10)
    await h.pump()
    assert h.starface.state[LOGIN] == (True, "Im Gespräch")
    record = await h.reconciler.state.bridge(USER)
    assert (record.failures, record.last_error) == (0, None)


async def test_a_failing_user_never_blocks_others(
    redis_client: aioredis.Redis, make_settings: Callable[..., Settings], fake_clock: FakeClock
) -> None:
    h = await harness(redis_client, make_settings, fake_clock)
    other, other_login = "bbbb0000-0000-4000-8000-000000000002", "0002"
    await h.link(other, other_login)
    original = h.starface.set_dnd

    async def refuse_first_user(login: str, enabled: bool) -> None:
        if login == LOGIN:
            from service.starface.gateway import LoginRefused

            raise LoginRefused(login, "wrong password")
        await original(login, enabled)

    h.starface.set_dnd = refuse_first_user  # type: ignore[method-assign]
    h.graph.set_own(USER, TEAMS_CALL)
    h.graph.set_own(other, TEAMS_CALL)
    await h.pump()
    assert h.starface.state[other_login] == (True, "Im Gespräch")
    due = await h.reconciler.schedule.due()
    assert due[USER] >= fake_clock.now + 500  # a refused password is retried slowly


async def test_unlinked_users_and_unknown_logins_are_skipped(
    redis_client: aioredis.Redis, make_settings: Callable[..., Settings], fake_clock: FakeClock
) -> None:
    h = await harness(redis_client, make_settings, fake_clock)
    stranger = "cccc0000-0000-4000-8000-000000000003"
    h.graph.set_own(stranger, TEAMS_CALL)
    h.graph.publish(stranger)
    await h.call_event("9999", "x", "CONNECTED")
    await h.pump()
    assert "9999" not in h.starface.state
    records = await DecisionLog(redis_client).recent(stranger)
    assert "no STARFACE login linked" in records[0].results[0]


async def test_a_lost_hangup_does_not_hold_busy_forever(
    redis_client: aioredis.Redis, make_settings: Callable[..., Settings], fake_clock: FakeClock
) -> None:
    h = await harness(redis_client, make_settings, fake_clock, call_max_seconds=3600)
    await h.call_event(LOGIN, "lost", "CONNECTED")
    await h.pump()
    assert USER in h.graph.sessions
    for _ in range(25):
        fake_clock.advance(170)
        await h.pump()
    assert USER not in h.graph.sessions
    assert await h.reconciler.state.calls(USER) == []


async def test_late_event_of_an_ended_call_is_ignored(
    redis_client: aioredis.Redis, make_settings: Callable[..., Settings], fake_clock: FakeClock
) -> None:
    h = await harness(redis_client, make_settings, fake_clock)
    await h.call_event(LOGIN, "c1", "CONNECTED")
    await h.call_event(LOGIN, "c1", "HANGUP")
    await h.call_event(LOGIN, "c1", "CONNECTED")  # retried callback arriving late
    await h.pump()
    assert await h.reconciler.state.calls(USER) == []


async def test_decisions_are_explained(
    redis_client: aioredis.Redis, make_settings: Callable[..., Settings], fake_clock: FakeClock
) -> None:
    h = await harness(redis_client, make_settings, fake_clock)
    h.graph.set_own(USER, TEAMS_CALL)
    await h.pump()
    records = await DecisionLog(redis_client).recent(USER)
    newest = records[0]
    assert newest.login == LOGIN
    assert newest.inputs["teams"] == "Busy/InACall"
    assert newest.actions == ["STARFACE DND on", "STARFACE status text 'Im Gespräch'"]
    assert newest.results == ["ok", "ok"]
    assert "Busy/InACall" in newest.rule
    text = newest.format()
    assert "STARFACE DND on -> ok" in text
    for _ in range(60):
        h.graph.set_own(USER, AWAY if h.graph.observed(USER) != AWAY else AVAILABLE)
        await h.pump(rounds=1)
    assert len(await DecisionLog(redis_client).recent(USER)) == 50


async def test_restart_mid_flight_loses_nothing(
    redis_client: aioredis.Redis, make_settings: Callable[..., Settings], fake_clock: FakeClock
) -> None:
    h = await harness(redis_client, make_settings, fake_clock, hold_seconds=30)
    h.graph.set_own(USER, TEAMS_CALL)
    await h.deliver()
    await h.worker.consumer.drain()
    claimed = await h.reconciler.schedule.claim(fake_clock.now)  # a process claims the user ...
    assert claimed == [USER]
    h.restart()  # ... and dies before reconciling
    await h.pump()
    assert h.starface.state[LOGIN][0] is False  # still held by the dead process
    fake_clock.advance(31)
    await h.pump()
    assert h.starface.state[LOGIN] == (True, "Im Gespräch")


async def test_a_changed_mapping_reconciles_every_user_again(
    redis_client: aioredis.Redis, make_settings: Callable[..., Settings], fake_clock: FakeClock
) -> None:
    h = await harness(redis_client, make_settings, fake_clock)
    assert await h.reconciler.adopt_mapping()  # the first start records the mapping
    await h.pump()
    assert h.starface.state[LOGIN] == (False, "Verfügbar")
    h.restart()
    assert not await h.reconciler.adopt_mapping()  # same mapping: nobody is due
    assert await h.reconciler.run_due() == 0
    h.mapping = parse_mapping('base = "de"\n[rows]\n"Available" = { dnd = false, text = "Frei" }\n')
    h.restart()
    assert await h.reconciler.adopt_mapping()
    await h.pump()
    assert h.starface.state[LOGIN] == (False, "Frei")


async def test_a_write_whose_end_was_never_recorded_is_written_again(
    redis_client: aioredis.Redis, make_settings: Callable[..., Settings], fake_clock: FakeClock
) -> None:
    """A worker wrote DND on to STARFACE and was killed before recording it: the record still
    says off, with the write begun (writing_at) and never ended.  The next reconcile must not
    trust the record, or the user keeps a DND that nobody wants."""
    h = await harness(redis_client, make_settings, fake_clock)
    assert h.starface.state[LOGIN] == (False, "Verfügbar")
    h.starface.state[LOGIN] = (True, "Im Gespräch")  # what the killed worker's writes did
    await redis_client.hset(keys.user_bridge(USER), "writing_at", repr(fake_clock()))
    await h.reconciler.mark_all([USER])
    await h.pump()
    assert h.starface.state[LOGIN] == (False, "Verfügbar")
    assert await redis_client.hget(keys.user_bridge(USER), "writing_at") is None
