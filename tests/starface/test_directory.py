"""Directory selection rules (pure), the shared store (real Valkey) and refresh (sandbox)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
import redis.asyncio as aioredis

from service.core import keys
from service.core.settings import Settings
from service.starface import directory
from service.starface.directory import (
    DUPLICATE_EMAIL,
    MISSING_EMAIL,
    NOTHING_SELECTED,
    UNKNOWN_GROUP,
    UNKNOWN_LOGIN,
    DirectoryStore,
    select_users,
)
from service.starface.gateway import StarfaceUnavailable
from service.starface.rest import RestClient, StarfaceUser, open_http
from tests.fixtures.starface_sandbox import StarfaceSandboxHandle

ANNA = StarfaceUser(1, "0001", "Anna@Example.com", "Anna", "Alpha")
BOB = StarfaceUser(2, "0002", "bob@example.com", "Bob", "Beta")
INFO_1 = StarfaceUser(3, "0003", "info@example.com", "Empfang", "Eins")
INFO_2 = StarfaceUser(4, "0004", "INFO@example.com ", "Empfang", "Zwei")
NOMAIL = StarfaceUser(5, "0005", "", "Lager", "")
EVE = StarfaceUser(6, "0006", "eve@example.com", "Eve", "")
ALL = [ANNA, BOB, INFO_1, INFO_2, NOMAIL, EVE]


def logins(selection: directory.Selection) -> list[str]:
    return [u.login for u in selection.users]


def kinds(selection: directory.Selection) -> list[str]:
    return [p.kind for p in selection.problems]


def test_group_plus_extra_logins() -> None:
    selection = select_users(ALL, group="Vertrieb", group_members={1, 2}, extra_logins=["0006"])
    assert logins(selection) == ["0001", "0002", "0006"]
    assert selection.problems == ()
    anna = selection.users[0]
    assert anna.email == "Anna@Example.com"
    assert anna.email_key == "anna@example.com"
    assert anna.display_name == "Anna Alpha"


def test_all_users_reports_duplicate_email_naming_both_and_skips_them() -> None:
    selection = select_users(ALL, select_all=True)
    assert logins(selection) == ["0001", "0002", "0006"]
    duplicate = next(p for p in selection.problems if p.kind == DUPLICATE_EMAIL)
    assert duplicate.logins == ("0003", "0004")
    assert "login 0003 (Empfang Eins)" in duplicate.message
    assert "login 0004 (Empfang Zwei)" in duplicate.message
    assert "info@example.com" in duplicate.message
    missing = next(p for p in selection.problems if p.kind == MISSING_EMAIL)
    assert missing.logins == ("0005",)
    assert "login 0005 (Lager) has no e-mail" in missing.message


def test_duplicate_only_counts_among_the_selected() -> None:
    selection = select_users(ALL, extra_logins=["0003", "0001"])
    assert logins(selection) == ["0001", "0003"]
    assert selection.problems == ()


def test_unknown_extra_login_and_unknown_group_are_reported() -> None:
    selection = select_users(ALL, group="Nope", group_members=None, extra_logins=["0001", "9999"])
    assert logins(selection) == ["0001"]
    assert kinds(selection) == [UNKNOWN_GROUP, UNKNOWN_LOGIN]
    assert selection.problems[1].logins == ("9999",)


def test_nothing_configured_is_reported() -> None:
    selection = select_users(ALL)
    assert selection.users == ()
    assert kinds(selection) == [NOTHING_SELECTED]


def test_email_without_at_sign_counts_as_missing() -> None:
    selection = select_users([StarfaceUser(9, "0009", "n/a")], extra_logins=["0009"])
    assert selection.users == ()
    assert kinds(selection) == [MISSING_EMAIL]


def test_user_in_group_and_extras_appears_once() -> None:
    selection = select_users(ALL, group="G", group_members={1}, extra_logins=["0001"])
    assert logins(selection) == ["0001"]


# -- store (real Valkey) ----------------------------------------------------------------------


async def test_store_serves_every_lookup_case_blind(redis_client: aioredis.Redis) -> None:
    store = DirectoryStore(redis_client)
    selection = select_users(ALL, select_all=True)
    assert await store.save(selection, refreshed_at=100.0) is True
    assert [u.login for u in await store.users()] == ["0001", "0002", "0006"]
    assert await store.logins() == ["0001", "0002", "0006"]
    assert await store.emails() == ["anna@example.com", "bob@example.com", "eve@example.com"]
    found = await store.by_email("  ANNA@example.COM ")
    assert found == StarfaceUser(1, "0001", "Anna@Example.com", "Anna", "Alpha")
    assert await store.by_login("0002") == StarfaceUser(2, "0002", "bob@example.com", "Bob", "Beta")
    assert await store.by_login("0003") is None
    assert await store.by_email("info@example.com") is None
    assert [p.kind for p in await store.problems()] == [MISSING_EMAIL, DUPLICATE_EMAIL]
    status = await store.status()
    assert (status.version, status.users, status.refreshed_at, status.last_error) == (1, 3, 100.0, None)
    lines = status.describe()
    assert lines[0] == "STARFACE directory: 3 user(s) selected, last refreshed 1970-01-01 00:01:40Z"
    assert any(
        line.startswith("  duplicate_email: login 0003 (Empfang Eins) and login 0004") for line in lines
    )
    assert any(line.startswith("  missing_email: login 0005 (Lager)") for line in lines)


async def test_store_version_moves_only_when_the_selection_changes(redis_client: aioredis.Redis) -> None:
    store = DirectoryStore(redis_client)
    first = select_users(ALL, extra_logins=["0001", "0002"])
    assert await store.save(first, refreshed_at=1.0) is True
    assert await store.save(first, refreshed_at=2.0) is False
    assert await store.version() == 1
    second = select_users(ALL, extra_logins=["0001"])
    assert await store.save(second, refreshed_at=3.0) is True
    assert await store.versioned_logins() == (2, ["0001"])
    assert await store.by_email("bob@example.com") is None  # the old e-mail index is gone too
    empty = select_users(ALL, extra_logins=["0005"])
    assert await store.save(empty, refreshed_at=4.0) is True
    assert await store.users() == []
    assert await redis_client.exists(keys.STARFACE_DIRECTORY) == 0


async def test_an_unchanged_refresh_writes_only_its_time_and_a_lost_hash_is_stored_again(
    redis_client: aioredis.Redis,
) -> None:
    store = DirectoryStore(redis_client)
    selection = select_users(ALL, extra_logins=["0001", "0002"])
    await store.save(selection, refreshed_at=1.0)

    async def hset_calls() -> int:
        stats = await redis_client.info("commandstats")
        return int(stats.get("cmdstat_hset", {}).get("calls", 0))

    before = await hset_calls()
    assert await store.save(selection, refreshed_at=2.0) is False
    assert await hset_calls() - before == 1  # the meta data; neither user hash is rewritten
    assert (await store.status()).refreshed_at == 2.0
    # The same digest with the users gone from Redis (flushed, or deleted by hand) is a change.
    await redis_client.delete(keys.STARFACE_DIRECTORY)
    assert await store.save(selection, refreshed_at=3.0) is True
    assert [u.login for u in await store.users()] == ["0001", "0002"]
    assert await store.by_email("bob@example.com") == BOB


async def test_failure_keeps_the_last_selection_and_is_shown(redis_client: aioredis.Redis) -> None:
    store = DirectoryStore(redis_client)
    await store.save(select_users(ALL, extra_logins=["0001"]), refreshed_at=1.0)
    await store.record_failure("STARFACE unavailable: GET /rest/users: HTTP 503", at=2.0)
    status = await store.status()
    assert status.users == 1
    assert status.last_error == "STARFACE unavailable: GET /rest/users: HTTP 503"
    assert status.last_error_at == 2.0
    assert status.describe()[1] == (
        "  last refresh failed at 1970-01-01 00:00:02Z: STARFACE unavailable: GET /rest/users: HTTP 503"
    )
    await store.save(select_users(ALL, extra_logins=["0001"]), refreshed_at=3.0)
    assert (await store.status()).last_error is None


# -- refresh against the sandbox --------------------------------------------------------------

ADMIN, ADMIN_PW = "0100", "admin-pw"


@pytest.fixture
def pbx(starface_sandbox: Callable[..., StarfaceSandboxHandle]) -> StarfaceSandboxHandle:
    handle = starface_sandbox()
    handle.add_user(ADMIN, ADMIN_PW, email="admin@example.com")
    handle.add_user("0001", "p", email="anna@example.com", first_name="Anna", family_name="Alpha")
    handle.add_user("0002", "p", email="bob@example.com", first_name="Bob")
    handle.add_user("0003", "p", email="info@example.com", first_name="Empfang", family_name="Eins")
    handle.add_user("0004", "p", email="Info@Example.com", first_name="Empfang", family_name="Zwei")
    handle.add_user("0005", "p", first_name="Lager")
    handle.update_user("0005", email="")
    handle.add_group("Vertrieb", ["0001", "0003"])
    return handle


@pytest.fixture
async def rest(pbx: StarfaceSandboxHandle) -> AsyncIterator[RestClient]:
    async with open_http(str(pbx.ca_file), timeout=aiohttp.ClientTimeout(total=5)) as http:
        yield RestClient(http, pbx.base_url, ADMIN, ADMIN_PW)


def sandbox_settings(
    make_settings: Callable[..., Settings], pbx: StarfaceSandboxHandle, **extra: str
) -> Settings:
    return make_settings(
        STARFACE_BASE_URL=pbx.base_url, STARFACE_ADMIN_LOGIN=ADMIN, STARFACE_ADMIN_PASSWORD=ADMIN_PW, **extra
    )


async def test_refresh_with_group_extra_logins_duplicate_and_missing_email(
    pbx: StarfaceSandboxHandle,
    rest: RestClient,
    redis_client: aioredis.Redis,
    make_settings: Callable[..., Settings],
) -> None:
    settings = sandbox_settings(
        make_settings, pbx, STARFACE_GROUP="vertrieb", STARFACE_EXTRA_LOGINS="0004,0005,0002,4711"
    )
    store = DirectoryStore(redis_client)
    selection = await directory.refresh(rest, store, settings, now=50.0)
    assert selection.logins == ["0001", "0002"]
    problems = {p.kind: p for p in selection.problems}
    assert set(problems) == {DUPLICATE_EMAIL, MISSING_EMAIL, UNKNOWN_LOGIN}
    assert problems[DUPLICATE_EMAIL].logins == ("0003", "0004")
    assert problems[MISSING_EMAIL].logins == ("0005",)
    assert problems[UNKNOWN_LOGIN].logins == ("4711",)
    assert await store.emails() == ["anna@example.com", "bob@example.com"]


async def test_a_directory_change_is_picked_up_by_the_next_refresh(
    pbx: StarfaceSandboxHandle,
    rest: RestClient,
    redis_client: aioredis.Redis,
    make_settings: Callable[..., Settings],
) -> None:
    settings = sandbox_settings(make_settings, pbx, STARFACE_GROUP="Vertrieb")
    store = DirectoryStore(redis_client)
    await directory.refresh(rest, store, settings)
    # 0003 shares its e-mail with 0004, but 0004 is not selected, so there is no conflict.
    assert await store.logins() == ["0001", "0003"]
    group = next(g for g in pbx.state()["groups"] if g["name"] == "Vertrieb")
    pbx.set_group_members(group["id"], ["0001", "0002", "0004"])
    pbx.update_user("0001", email="anna.alpha@example.com")
    await directory.refresh(rest, store, settings)
    assert await store.logins() == ["0001", "0002", "0004"]
    assert (await store.by_email("ANNA.ALPHA@example.com")) is not None
    assert await store.by_email("anna@example.com") is None
    assert await store.version() == 2


async def test_unknown_group_is_reported(
    pbx: StarfaceSandboxHandle,
    rest: RestClient,
    redis_client: aioredis.Redis,
    make_settings: Callable[..., Settings],
) -> None:
    settings = sandbox_settings(make_settings, pbx, STARFACE_GROUP="Gibtsnicht", STARFACE_EXTRA_LOGINS="0002")
    selection = await directory.refresh(rest, DirectoryStore(redis_client), settings)
    assert selection.logins == ["0002"]
    assert [p.kind for p in selection.problems] == [UNKNOWN_GROUP]


async def test_pbx_down_keeps_the_last_selection(
    pbx: StarfaceSandboxHandle,
    rest: RestClient,
    redis_client: aioredis.Redis,
    make_settings: Callable[..., Settings],
) -> None:
    settings = sandbox_settings(make_settings, pbx, STARFACE_SELECT_ALL="true")
    store = DirectoryStore(redis_client)
    await directory.refresh(rest, store, settings)
    before = await store.logins()
    pbx.set_faults(down="503")
    with pytest.raises(StarfaceUnavailable):
        await directory.refresh(rest, store, settings)
    status = await store.status()
    assert await store.logins() == before
    assert status.last_error is not None
    assert "503" in status.last_error


async def test_run_refreshes_once_per_period_across_replicas(
    pbx: StarfaceSandboxHandle,
    rest: RestClient,
    redis_client: aioredis.Redis,
    make_settings: Callable[..., Settings],
) -> None:
    settings = sandbox_settings(make_settings, pbx, STARFACE_EXTRA_LOGINS="0001")
    store = DirectoryStore(redis_client)
    refreshed: list[int] = []
    stop = asyncio.Event()

    async def on_refresh(selection: directory.Selection) -> None:
        refreshed.append(len(selection.users))
        if len(refreshed) == 1:
            stop.set()

    # Two "replicas" start together: the lease lets exactly one of them read the PBX.
    await asyncio.wait_for(
        asyncio.gather(
            directory.run(rest, store, settings, stop, on_refresh=on_refresh),
            directory.run(rest, store, settings, stop, on_refresh=on_refresh),
        ),
        timeout=10,
    )
    assert refreshed == [1]
    assert await store.logins() == ["0001"]
    assert await redis_client.ttl(keys.STARFACE_DIRECTORY_LOCK) > 0


async def test_selected_users_carry_their_groups_for_mapping_overrides(
    pbx: StarfaceSandboxHandle,
    rest: RestClient,
    redis_client: aioredis.Redis,
    make_settings: Callable[..., Settings],
) -> None:
    group_id = pbx.add_group("Empfang", ["0001", "0002"])["id"]
    settings = sandbox_settings(make_settings, pbx, STARFACE_SELECT_ALL="true")
    store = DirectoryStore(redis_client)
    await directory.refresh(rest, store, settings)
    anna = await store.by_login("0001")
    bob = await store.by_login("0002")
    assert anna is not None
    assert bob is not None
    assert "Vertrieb" in anna.groups
    assert "Empfang" in anna.groups
    assert set(bob.groups) == {"Empfang", str(group_id)}


async def test_unreadable_groups_matter_only_to_a_group_rule_and_then_name_it(
    pbx: StarfaceSandboxHandle,
    rest: RestClient,
    redis_client: aioredis.Redis,
    make_settings: Callable[..., Settings],
) -> None:
    store = DirectoryStore(redis_client)
    pbx.set_faults(fail_paths=["/rest/groups"])
    everyone = sandbox_settings(make_settings, pbx, STARFACE_SELECT_ALL="true")
    selection = await directory.refresh(rest, store, everyone)
    assert selection.logins  # nobody needed the groups to be selected
    assert [p.kind for p in selection.problems][-1] == directory.GROUPS_UNREADABLE
    assert "group overrides of the mapping do not apply" in selection.problems[-1].message
    by_group = sandbox_settings(make_settings, pbx, STARFACE_GROUP="Vertrieb")
    with pytest.raises(StarfaceUnavailable) as caught:
        await directory.refresh(rest, store, by_group)
    assert "STARFACE_GROUP='Vertrieb' needs the STARFACE groups" in str(caught.value)
    assert await store.logins() == selection.logins  # the last good selection stays
    status = await store.status()
    assert status.last_error is not None
    assert "STARFACE_GROUP='Vertrieb'" in status.last_error


async def test_a_failed_refresh_releases_only_its_own_gate(redis_client: aioredis.Redis) -> None:
    from redis.asyncio.lock import Lock

    from service.starface.directory import _release

    mine = Lock(redis_client, keys.STARFACE_DIRECTORY_LOCK, timeout=60, blocking=False, thread_local=False)
    assert await mine.acquire()
    await redis_client.set(keys.STARFACE_DIRECTORY_LOCK, "another replica's token", px=60_000)
    await _release(mine)  # ours ran out and another replica took the gate: it must stay
    assert await redis_client.get(keys.STARFACE_DIRECTORY_LOCK) == b"another replica's token"
    await redis_client.delete(keys.STARFACE_DIRECTORY_LOCK)
    assert await mine.acquire()
    await _release(mine)
    assert await redis_client.get(keys.STARFACE_DIRECTORY_LOCK) is None
