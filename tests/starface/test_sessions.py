"""UCI session manager: real Valkey, the STARFACE sandbox, and the real callback endpoint."""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from service.bridge.identity import IdentityStore
from service.bridge.readback import ReadBack
from service.bridge.userstate import UserStateStore
from service.core import keys, metrics
from service.core.partitions import Partitions
from service.core.secretbox import SecretBox
from service.core.settings import Settings
from service.starface import xmlrpc
from service.starface.calls import CallEvent
from service.starface.credentials import CredentialStore
from service.starface.directory import DirectoryStore, select_users
from service.starface.gateway import CredentialsMissing, LoginRefused, UnknownUser
from service.starface.rest import StarfaceUser, open_http
from service.starface.sessions import ACTIVE, FAILED, LOGGED_OUT, SessionManager, SessionStatus
from tests.conftest import SECRET_KEY
from tests.fixtures.starface_sandbox import StarfaceSandboxHandle
from tests.web.test_starface_callback import serve_callbacks, stream

PASSWORDS = {"0001": "pw-one-1", "0002": "pw-two-2", "0003": "pw-three-3", "0004": "pw-four-4"}
WRONG = "definitely-wrong-pw"


@dataclass
class Env:
    pbx: StarfaceSandboxHandle
    manager: SessionManager
    credentials: CredentialStore
    redis: aioredis.Redis
    settings: Settings
    http: aiohttp.ClientSession
    callback_url: str
    t0: float

    def replica(self, **options: float) -> SessionManager:
        return SessionManager(
            self.redis,
            self.settings,
            self.http,
            callback_base_url=self.callback_url,
            **options,  # type: ignore[arg-type]
        )


@pytest.fixture
def pbx(starface_sandbox: Callable[..., StarfaceSandboxHandle]) -> StarfaceSandboxHandle:
    handle = starface_sandbox()
    for login, password in PASSWORDS.items():
        handle.add_user(login, password, email=f"u{login}@example.com", oauth_allowed=True)
    return handle


def settings_for(
    make_settings: Callable[..., Settings], pbx: StarfaceSandboxHandle, **extra: str
) -> Settings:
    return make_settings(
        STARFACE_BASE_URL=pbx.base_url,
        STARFACE_ADMIN_LOGIN="0001",
        STARFACE_ADMIN_PASSWORD=PASSWORDS["0001"],
        EXTRA_CA_FILE=str(pbx.ca_file),
        STARFACE_KEEPALIVE_SECONDS="30",
        **extra,
    )


@pytest.fixture
async def env(
    pbx: StarfaceSandboxHandle,
    redis_url: str,
    redis_client: aioredis.Redis,
    make_settings: Callable[..., Settings],
) -> AsyncIterator[Env]:
    settings = settings_for(make_settings, pbx)
    credentials = CredentialStore(redis_client, SecretBox(SECRET_KEY))
    # 0003 has no credentials, 0004 a wrong password.
    await credentials.put_many({"0001": PASSWORDS["0001"], "0002": PASSWORDS["0002"], "0004": WRONG})
    async with (
        serve_callbacks(redis_url, settings) as callback_url,
        open_http(settings.extra_ca_file, timeout=aiohttp.ClientTimeout(total=5)) as http,
    ):
        manager = SessionManager(redis_client, settings, http, callback_base_url=callback_url)
        # Ahead of wall time, so that credentials stored during a test are already due.
        t0 = time.time() + 5
        yield Env(pbx, manager, credentials, redis_client, settings, http, callback_url, t0)


async def status_of(env: Env, login: str) -> str | None:
    status = await env.manager.status(login)
    return None if status is None else status.state


async def test_first_pass_logs_in_everyone_with_credentials_and_reports_the_rest(env: Env) -> None:
    await env.manager.sync(PASSWORDS, now=env.t0)
    report = await env.manager.run_due(env.t0)
    assert report.outcomes == {"login": 2, "credentials_missing": 1, "login_refused": 1}
    assert report.failures == {"0003": "credentials_missing", "0004": "login_refused"}
    for login in ("0001", "0002"):
        session = env.pbx.session(login)
        assert session is not None
        url = urllib.parse.urlsplit(session["callbackUrl"])
        assert f"{url.scheme}://{url.netloc}" == env.callback_url
        assert url.path.startswith("/starface/uci/")
        assert session["subscriptions"] == ["ucp.v30.events.call"]
        assert await status_of(env, login) == ACTIVE
    assert env.pbx.session("0003") is None
    assert env.pbx.session("0004") is None
    refused = await env.manager.status("0004")
    assert refused is not None
    assert refused.state == FAILED
    assert refused.error == "login_refused"
    assert WRONG not in (refused.detail or "")
    statuses = {s.login: s.error for s in await env.manager.statuses()}
    assert statuses == {"0001": None, "0002": None, "0003": "credentials_missing", "0004": "login_refused"}
    lines = [s.describe() for s in await env.manager.statuses()]
    assert lines[0] == "login 0001: active"
    assert lines[2] == "login 0003: credentials_missing (no STARFACE credentials stored for login '0003')"
    assert lines[3].startswith("login 0004: STARFACE refused the password (STARFACE refused login '0004'")

    assert (await env.manager.run_due(env.t0 + 1)).outcomes == {}  # nothing is due yet
    # keepAlive on schedule; failed logins wait for their slower retry.
    assert (await env.manager.run_due(env.t0 + 30)).outcomes == {"keepalive": 2}
    assert (await env.manager.run_due(env.t0 + 300)).outcomes == {"keepalive": 2, "credentials_missing": 1}
    # A refused password waits 10 minutes: retrying a wrong password faster can lock the account.
    assert (await env.manager.run_due(env.t0 + 600)).outcomes == {
        "keepalive": 2,
        "credentials_missing": 1,
        "login_refused": 1,
    }


async def test_sessions_dropped_by_the_pbx_are_logged_in_again(env: Env) -> None:
    await env.manager.sync(["0001", "0002"], now=env.t0)
    await env.manager.run_due(env.t0)
    first = env.pbx.session("0001")
    assert first is not None
    env.pbx.advance(61)  # no keepAlive for longer than the PBX's 60 s: both sessions expire
    report = await env.manager.run_due(env.t0 + 30)
    assert report.outcomes == {"relogin": 2}
    again = env.pbx.session("0001")
    assert again is not None
    assert again["id"] != first["id"]
    # The callback path survives the re-login, so events in flight still find the user.
    assert again["callbackUrl"] == first["callbackUrl"]
    env.pbx.drop_session("0002")
    assert (await env.manager.run_due(env.t0 + 60)).outcomes == {"keepalive": 1, "relogin": 1}
    env.pbx.restart()
    assert (await env.manager.run_due(env.t0 + 90)).outcomes == {"relogin": 2}


async def test_call_events_reach_the_call_stream_through_the_real_endpoint(env: Env) -> None:
    await env.manager.sync(["0001"], now=env.t0)
    await env.manager.run_due(env.t0)
    pbx = env.pbx
    call_id = await asyncio.to_thread(pbx.place_call, "0001", wait=False, empty_first_state=True)
    await asyncio.to_thread(pbx.answer, call_id, wait=False)
    await asyncio.to_thread(pbx.hangup, call_id, wait=False)
    deliveries = await pbx.await_deliveries(4, login="0001")
    assert [d["ok"] for d in deliveries] == [True] * 4
    events = await stream(env.redis)
    assert [e.state for e in events] == ["", "RINGING", "CONNECTED", "HANGUP"]
    assert {(e.login, e.call_id) for e in events} == {("0001", call_id)}
    assert events[0].caller_name == ""
    assert events[1].caller_name == "Erika Mustermann"


async def test_leaving_user_is_logged_out_and_its_callback_path_is_gone(env: Env) -> None:
    await env.manager.sync(["0001", "0002"], now=env.t0)
    await env.manager.run_due(env.t0)
    session = env.pbx.session("0001")
    assert session is not None
    sync = await env.manager.sync(["0002"], now=env.t0 + 1)
    assert (sync.added, sync.removed) == ((), ("0001",))
    report = await env.manager.run_due(env.t0 + 1)
    assert report.logged_out == ["0001"]
    assert env.pbx.session("0001") is None
    assert env.pbx.session("0002") is not None
    assert await env.manager.status("0001") is None
    assert set((await env.redis.hgetall(keys.UCI_CALLBACK_TOKENS)).values()) == {b"0002"}
    path = urllib.parse.urlsplit(session["callbackUrl"]).path
    body = xmlrpc.dumps_call("ucp.v30.events.call.receiveCallState", [{"id": "late", "state": "RINGING"}])
    async with aiohttp.ClientSession() as client, client.post(env.callback_url + path, data=body) as answer:
        assert answer.status == 404
    # Selected again later: a new session with a new callback path.
    await env.manager.sync(["0001", "0002"], now=env.t0 + 2)
    assert (await env.manager.run_due(env.t0 + 2)).outcomes == {"login": 1}
    renewed = env.pbx.session("0001")
    assert renewed is not None
    assert renewed["callbackUrl"] != session["callbackUrl"]


async def selected_users(env: Env, prefix: str, count: int) -> list[str]:
    """``count`` more PBX users with stored credentials, selected (due) at ``env.t0``."""
    logins = [f"{prefix}{n:03d}" for n in range(count)]
    for login in logins:
        env.pbx.add_user(login, "pw-" + login)
    await env.credentials.put_many({login: "pw-" + login for login in logins})
    await env.manager.sync(logins, now=env.t0)
    return logins


async def test_two_replicas_never_double_up(env: Env) -> None:
    logins = await selected_users(env, "1", 24)
    other = env.replica(batch=5)
    env.manager.batch = 5
    first, second = await asyncio.gather(env.manager.run_due(env.t0), other.run_due(env.t0))
    assert first.outcomes["login"] + second.outcomes["login"] == len(logins)
    assert sum(first.outcomes.values()) + sum(second.outcomes.values()) == len(logins)
    first, second = await asyncio.gather(env.manager.run_due(env.t0 + 30), other.run_due(env.t0 + 30))
    assert first.outcomes["keepalive"] + second.outcomes["keepalive"] == len(logins)
    assert all(env.pbx.session(login) is not None for login in logins)


async def test_sessions_logged_in_together_keep_alive_spread_over_the_interval(env: Env) -> None:
    await selected_users(env, "2", 40)
    assert (await env.manager.run_due(env.t0)).outcomes == {"login": 40}
    scheduled: Any = await env.redis.zrange(keys.UCI_DUE, 0, -1, withscores=True)
    due = sorted(score / 1000 - env.t0 for _, score in scheduled)
    # All within the interval (30 s), none before half of it, and not in one clump.
    assert due[0] >= 15
    assert due[-1] <= 30
    assert due[-1] - due[0] > 10
    assert len({round(d) for d in due}) > 10
    # The next pass keeps each session's own phase: a full interval after its keepAlive.
    first = (await env.manager.run_due(env.t0 + 22.5)).outcomes["keepalive"]
    assert 0 < first < 40
    rest = (await env.manager.run_due(env.t0 + 30)).outcomes["keepalive"]
    assert first + rest == 40


async def test_work_of_a_dead_replica_comes_due_after_its_lease(env: Env) -> None:
    await env.manager.sync(["0001", "0002"], now=env.t0)
    dead = env.replica(lease_seconds=60)
    claim = await dead.claim(env.t0)  # ... and the replica dies before doing the work
    assert sorted(claim.logins) == ["0001", "0002"]
    assert (await env.manager.run_due(env.t0 + 59)).outcomes == {}
    report = await env.manager.run_due(env.t0 + 61)
    assert report.outcomes == {"login": 2}
    # Had it only been slow, its late completion no longer moves the schedule.
    assert await dead.complete(claim, {"0001": env.t0 + 9999, "0002": env.t0 + 9999}) == 0
    assert (await env.manager.run_due(env.t0 + 91)).outcomes == {"keepalive": 2}


async def test_corrected_credentials_take_effect_without_waiting_for_the_retry(env: Env) -> None:
    await env.manager.sync(["0004"], now=env.t0)
    assert (await env.manager.run_due(env.t0)).failures == {"0004": "login_refused"}
    await env.credentials.put("0004", PASSWORDS["0004"])
    assert (await env.manager.run_due(env.t0 + 1)).outcomes == {"login": 1}
    assert await status_of(env, "0004") == ACTIVE


async def test_pbx_outage_is_retried_at_keepalive_pace(env: Env) -> None:
    await env.manager.sync(["0001"], now=env.t0)
    await env.manager.run_due(env.t0)
    env.pbx.set_faults(down="refuse")
    report = await env.manager.run_due(env.t0 + 30)
    assert report.failures == {"0001": "unavailable"}
    env.pbx.clear_faults()
    assert (await env.manager.run_due(env.t0 + 60)).outcomes == {"login": 1}
    assert await status_of(env, "0001") == ACTIVE


async def test_gateway_logs_in_on_demand_and_after_a_drop(env: Env) -> None:
    await env.manager.sync(["0001", "0003", "0004"], now=env.t0)
    await env.manager.set_dnd("0001", True)  # no pass has run: the gateway logs in itself
    assert (await env.manager.read_state("0001")).dnd is True
    env.pbx.drop_session("0001")
    await env.manager.set_status_text("0001", "Im Gespräch")
    state = await env.manager.read_state("0001")
    assert (state.dnd, state.status_text) == (True, "Im Gespräch")
    assert [e["value"] for e in env.pbx.history("0001")["statusText"]] == ["Im Gespräch"]
    with pytest.raises(UnknownUser):
        await env.manager.set_dnd("0002", True)  # not selected
    with pytest.raises(CredentialsMissing) as missing:
        await env.manager.set_dnd("0003", True)
    assert missing.value.login == "0003"
    with pytest.raises(LoginRefused) as refused:
        await env.manager.set_dnd("0004", True)
    assert refused.value.login == "0004"
    assert WRONG not in str(refused.value)
    assert await status_of(env, "0004") == FAILED
    assert env.pbx.user("0002")["dnd"] is False


async def test_concurrent_writes_after_a_dropped_session_log_in_once(env: Env) -> None:
    await env.manager.sync(["0001"], now=env.t0)
    await env.manager.set_dnd("0001", False)
    for _ in range(3):
        env.pbx.drop_session("0001")
        # DND and status text go out together, as the reconciler sends them.
        await asyncio.gather(
            env.manager.set_dnd("0001", True),
            env.manager.set_status_text("0001", "Im Gespräch"),
            env.manager.read_state("0001"),
        )
    # A second login would have replaced the first session: none was replaced.
    drops = [d["reason"] for d in env.pbx.state()["sessionDrops"] if d["login"] == "0001"]
    assert drops == ["dropped"] * 3
    assert (env.pbx.user("0001")["dnd"], env.pbx.user("0001")["statusText"]) == (True, "Im Gespräch")


async def test_a_pass_and_a_write_that_find_the_session_failed_log_in_once(env: Env) -> None:
    await env.manager.sync(["0001"], now=env.t0)
    await env.manager.run_due(env.t0)
    env.pbx.drop_session("0001")
    failed = SessionStatus("0001", FAILED, env.t0, error="starface_unavailable")
    await env.redis.hset(keys.UCI_SESSIONS, "0001", failed.to_json())
    # The pass reads the state of its whole batch up front; the write logs in meanwhile.
    await asyncio.gather(env.manager.run_due(env.t0 + 31), env.manager.set_dnd("0001", True))
    drops = [d["reason"] for d in env.pbx.state()["sessionDrops"] if d["login"] == "0001"]
    assert drops == ["dropped"]  # a second login would have replaced the new session
    assert env.pbx.user("0001")["dnd"] is True
    assert await status_of(env, "0001") == ACTIVE


async def test_a_pass_that_read_its_batch_before_a_write_logged_in_does_not_log_in_again(env: Env) -> None:
    await env.manager.sync(["0001"], now=env.t0)
    # What the pass took with its batch: no session yet, no login by this process.
    stale = SessionStatus("0001", FAILED, env.t0, error="starface_unavailable")
    sealed = await env.redis.hget(keys.STARFACE_CREDENTIALS, "0001")
    seen = 0
    await env.manager.set_dnd("0001", True)  # meanwhile a write logs in
    _, outcome, status = await env.manager._work("0001", env.t0 + 31, stale, sealed, seen)
    assert (outcome, status.state) == ("login", ACTIVE)
    assert not [d for d in env.pbx.state()["sessionDrops"] if d["login"] == "0001"]  # none replaced
    assert env.pbx.user("0001")["dnd"] is True


async def test_a_write_that_read_the_state_before_another_logged_in_does_not_log_in_again(env: Env) -> None:
    await env.manager.sync(["0001"], now=env.t0)
    # What the second write read: no session yet, no login by this process.
    stale = SessionStatus("0001", FAILED, env.t0, error="starface_unavailable")
    sealed = await env.redis.hget(keys.STARFACE_CREDENTIALS, "0001")
    await env.manager.set_dnd("0001", True)  # meanwhile the first write logs in

    async def text(client: Any) -> None:
        await client.set_status_text("Im Gespräch")

    await env.manager._act_on_session("0001", text, stale, sealed, 0)
    assert not [d for d in env.pbx.state()["sessionDrops"] if d["login"] == "0001"]  # none replaced
    assert (env.pbx.user("0001")["dnd"], env.pbx.user("0001")["statusText"]) == (True, "Im Gespräch")


async def test_the_callback_rides_on_every_request_of_a_session(env: Env) -> None:
    await env.manager.sync(["0001"], now=env.t0)
    await env.manager.run_due(env.t0)  # login, subscribeEvents, getCallIds
    await env.manager.set_dnd("0001", True)
    await env.manager.set_status_text("0001", "Im Gespräch")
    await env.manager.run_due(env.t0 + 31)  # keepAlive
    session = env.pbx.session("0001")
    assert session is not None
    assert session["callbackRequests"] == 6


async def test_with_the_setting_off_only_login_carries_the_callback(env: Env) -> None:
    env.manager.settings = env.manager.settings.model_copy(
        update={"starface_callback_on_every_request": False}
    )
    await env.manager.sync(["0001"], now=env.t0)
    await env.manager.run_due(env.t0)
    await env.manager.set_dnd("0001", True)
    session = env.pbx.session("0001")
    assert session is not None
    assert session["callbackRequests"] == 1


async def test_calls_in_progress_at_login_are_queued_like_callbacks(env: Env) -> None:
    # A call is answered while the bridge has no session (a restart): its events reached nobody.
    call_id = env.pbx.place_call("0001", wait=False)
    env.pbx.answer(call_id, wait=False)
    await env.manager.sync(["0001", "0002"], now=env.t0)
    await env.manager.run_due(env.t0)
    entries: Any = await env.redis.xrange(keys.call_stream(0))
    events = [CallEvent.from_fields({k.decode(): v.decode() for k, v in f.items()}) for _, f in entries]
    assert [(e.login, e.call_id, e.state, e.source) for e in events] == [
        ("0001", call_id, "CONNECTED", "recovered")
    ]
    assert events[0].caller_number or events[0].called_number  # with the participants


async def test_logout_all_at_shutdown(env: Env) -> None:
    await env.manager.sync(["0001", "0002"], now=env.t0)
    await env.manager.run_due(env.t0)
    assert sorted(await env.manager.logout_all()) == ["0001", "0002"]
    assert env.pbx.session("0001") is None
    assert env.pbx.session("0002") is None
    assert await status_of(env, "0001") == LOGGED_OUT
    # The next start logs in again at once.
    assert (await env.replica().run_due(time.time() + 10)).outcomes == {"login": 2}


async def test_oauth_sessions_use_the_users_own_jwt(
    pbx: StarfaceSandboxHandle,
    redis_client: aioredis.Redis,
    redis_url: str,
    make_settings: Callable[..., Settings],
) -> None:
    settings = settings_for(
        make_settings, pbx, STARFACE_AUTH="oauth", STARFACE_OAUTH_CLIENT_SECRET=pbx.oauth_client_secret
    )
    await CredentialStore(redis_client, SecretBox(SECRET_KEY)).put_many({"0001": PASSWORDS["0001"]})
    async with (
        serve_callbacks(redis_url, settings) as url,
        open_http(settings.extra_ca_file) as http,
    ):
        manager = SessionManager(redis_client, settings, http, callback_base_url=url)
        now = time.time() + 5
        await manager.sync(["0001"], now=now)
        assert (await manager.run_due(now)).outcomes == {"login": 1}
        await manager.set_dnd("0001", True)
        assert pbx.user("0001")["dnd"] is True


async def test_production_loop_follows_the_directory(env: Env) -> None:
    store = DirectoryStore(env.redis)
    users = [StarfaceUser(i, login, f"u{login}@example.com") for i, login in enumerate(PASSWORDS, 1)]
    await store.save(select_users(users, extra_logins=["0001"]), refreshed_at=1.0)
    stop = asyncio.Event()
    loop = asyncio.create_task(env.manager.run(stop, logins=store.versioned_logins, tick=0.02))
    try:
        await wait_until(lambda: env.pbx.session("0001") is not None)
        await store.save(select_users(users, extra_logins=["0002"]), refreshed_at=2.0)
        await wait_until(lambda: env.pbx.session("0002") is not None and env.pbx.session("0001") is None)
    finally:
        stop.set()
        await asyncio.wait_for(loop, timeout=5)


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(condition):
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("refusal", ["401", "fault"])
async def test_a_refused_password_is_tried_at_most_three_times_an_hour_then_left_alone(
    env: Env, refusal: str
) -> None:
    # Whether STARFACE refuses a wrong password with HTTP 401 or with a fault is not documented.
    env.pbx.set_faults(refused_login=refusal)

    def refused_by_the_pbx() -> float:
        return float(metrics.STARFACE_LOGINS_REFUSED._value.get())

    before = refused_by_the_pbx()
    await env.credentials.put_many({"0004": WRONG})
    await env.manager.sync(["0004"], now=env.t0)
    for minute in range(0, 60, 1):
        await env.manager.run_due(env.t0 + minute * 60)
    assert refused_by_the_pbx() - before == 3  # the PBX saw three wrong passwords in the hour, no more
    [status] = await env.manager.statuses()
    assert "STARFACE refused the password 3 times in the last hour" in status.describe()
    # Writes of the reconciler do not get around the guard either.
    with pytest.raises(LoginRefused):
        await env.manager.set_dnd("0004", True)
    assert refused_by_the_pbx() - before == 3
    # The right password is tried at once, and it works.
    await env.credentials.put_many({"0004": PASSWORDS["0004"]})
    report = await env.manager.run_due(env.t0 + 3601)
    assert report.outcomes == {"login": 1}


async def test_a_call_the_pbx_no_longer_has_gets_its_missed_hangup_at_login(env: Env) -> None:
    # The bridge holds a call whose HANGUP went to a session that was gone (a PBX restart).
    user_id = "00000000-0000-4000-8000-000000000001"
    await env.redis.hset(keys.IDENTITY_USER_BY_LOGIN, "0001", user_id)
    await env.redis.hset(keys.user_calls(user_id), mapping={"old-call": "CONNECTED|1.0"})
    # A call first seen after the PBX was asked may just be too new for its answer: kept.
    await env.redis.hset(keys.user_calls(user_id), mapping={"new-call": f"RINGING|{time.time() + 60}"})
    await env.manager.sync(["0001"], now=env.t0)
    await env.manager.run_due(env.t0)
    entries: Any = await env.redis.xrange(keys.call_stream(0))
    events = [CallEvent.from_fields({k.decode(): v.decode() for k, v in f.items()}) for _, f in entries]
    assert [(e.login, e.call_id, e.state, e.source) for e in events] == [
        ("0001", "old-call", "HANGUP", "recovered")
    ]


async def test_every_keepalive_reads_the_users_state_back_into_the_bridge_record(env: Env) -> None:
    await IdentityStore(env.redis).replace({"eeee0000-0000-4000-8000-000000000001": "0001"})
    partitions = Partitions()
    manager = env.replica(read_back=ReadBack(env.redis, partitions).check)  # type: ignore[arg-type]
    store = UserStateStore(env.redis)
    user = "eeee0000-0000-4000-8000-000000000001"
    await manager.sync(["0001", "0002"], now=env.t0)
    await manager.run_due(env.t0)  # logins: nothing read yet
    assert (await store.bridge(user)).seen_at is None
    await store.update_bridge(user, applied_dnd=False, applied_text="Verfügbar")
    env.pbx.set_dnd_on_phone("0001", True)
    env.pbx.set_text_on_phone("0001", "Mittagspause")
    due_key = keys.reconcile_due(partitions.of(user))
    due_before = await env.redis.zscore(due_key, user)
    report = await manager.run_due(env.t0 + 30)
    assert report.outcomes == {"keepalive": 2}  # 0002 is not linked: kept alive, not read
    bridge = await store.bridge(user)
    assert (bridge.seen_dnd, bridge.seen_text) == (True, "Mittagspause")
    assert due_before is None
    assert await env.redis.zscore(due_key, user) is not None  # the reconcile decides
    env.pbx.set_dnd_on_phone("0001", False)
    env.pbx.set_text_on_phone("0001", "Verfügbar")
    await manager.run_due(env.t0 + 60)
    bridge = await store.bridge(user)
    assert (bridge.seen_dnd, bridge.seen_text) == (False, "Verfügbar")
