"""The scheduler against the Graph sandbox and real Valkey: shards, renewal, recovery, alerts."""

from __future__ import annotations

import asyncio
import threading

import pytest

from service.core import keys
from service.graph.certificates import CertificateStore
from service.graph.clientstate import ClientStates
from subscriptions.accounts import AccountState
from subscriptions.renewal import Action
from subscriptions.scheduler import status
from subscriptions.shards import CAPACITY
from tests.fixtures.subscription_world import WorldFactory


async def test_small_world_creates_one_subscription_and_resyncs(subscription_world: WorldFactory) -> None:
    world = await subscription_world(users=10, accounts=1)
    report = await world.run_pass()
    assert report.ok, report
    assert [o.action for o in report.outcomes] == [Action.CREATED]
    subs = world.sandbox_subscriptions()
    assert len(subs) == 1
    assert sorted(subs[0]["userIds"]) == sorted(world.user_ids.values())
    assert subs[0]["notificationUrl"] == f"{world.settings.public_base_url}/graph/notifications"
    assert subs[0]["lifecycleNotificationUrl"] == f"{world.settings.public_base_url}/graph/lifecycle"
    assert subs[0]["includeResourceData"] is True
    current = await CertificateStore(world.redis, world.box).current()
    assert subs[0]["encryptionCertificateId"] == current.id
    # The web tier can check the clientState of this very subscription.
    states = await ClientStates(world.redis, world.box).get_many([subs[0]["id"]])
    assert len(states[subs[0]["id"]]) >= 32
    assert sorted(await world.queued_resync_users()) == sorted(world.user_ids.values())
    second = await world.run_pass()
    assert [o.action for o in second.outcomes] == [Action.NONE]
    assert not second.full_resync
    overview = await status(world.redis, world.accounts)
    [account] = world.accounts
    assert overview["accounts"][account]["subscription"]["id"] == subs[0]["id"]
    assert overview["accounts"][account]["health"]["state"] == "ok"
    assert overview["scheduler"]["users"] == "10"


async def test_1301_users_with_two_accounts_names_the_shortfall(subscription_world: WorldFactory) -> None:
    world = await subscription_world(users=1301, accounts=2, pre_resolved=True)
    report = await world.run_pass()
    assert report.shortfall is not None
    assert report.shortfall.needed == 3
    assert report.shortfall.missing == 1
    assert "1301 users need 3 service accounts" in str(report.shortfall)
    assert "add 1 more" in str(report.shortfall)
    assert world.sandbox_subscriptions() == []
    status = await world.redis.hget(keys.SCHEDULER_STATUS, "shortfall")
    assert status is not None
    assert b"add 1 more" in status


async def test_1301_users_with_three_accounts_get_three_subscriptions(
    subscription_world: WorldFactory,
) -> None:
    world = await subscription_world(users=1301, accounts=3, pre_resolved=True)
    report = await world.run_pass()
    assert report.ok, report.errors
    subs = world.sandbox_subscriptions()
    assert len(subs) == 3
    sizes = [len(s["userIds"]) for s in subs]
    assert all(size <= CAPACITY for size in sizes)
    covered = [u for s in subs for u in s["userIds"]]
    assert sorted(covered) == sorted(world.user_ids.values())  # everyone exactly once
    assert report.resynced == 1301
    assert sorted(await world.queued_resync_users()) == sorted(world.user_ids.values())


async def test_hours_of_compressed_time_never_let_a_subscription_expire(
    subscription_world: WorldFactory,
) -> None:
    world = await subscription_world(users=30, accounts=2)
    first = await world.run_pass()
    assert first.ok
    ids = {s["id"] for s in world.sandbox_subscriptions()}
    patches = 0
    for _ in range(6 * 6):  # six hours in ten-minute steps
        world.handle.advance(600)
        await world.settle()  # lifecycle events sent during the jump reach the receiver
        report = await world.run_pass()
        assert report.ok, report.errors
        assert all(o.action in (Action.NONE, Action.RENEWED, Action.REAUTHORIZED) for o in report.outcomes)
        patches += sum(o.action is not Action.NONE for o in report.outcomes)
        subs = world.sandbox_subscriptions()
        assert {s["id"] for s in subs} == ids  # never expired, never recreated
        assert all(s["delivering"] for s in subs)  # and never left without authorization
    # Each subscription needs a PATCH at least every 58 minutes, but no PATCH storm either.
    assert 2 * 6 <= patches <= 2 * 18


async def test_deleted_subscription_is_recreated_and_resynced(subscription_world: WorldFactory) -> None:
    world = await subscription_world(users=20, accounts=1)
    await world.run_pass()
    [old] = world.sandbox_subscriptions()
    world.handle.control("DELETE", f"/subscriptions/{old['id']}")
    await world.redis.delete(keys.presence_stream(0))
    # Graph does not announce a deletion: the periodic existence check (every 5 minutes) finds it
    # long before the renewal would.
    world.handle.advance(6 * 60)
    report = await world.run_pass()
    assert [o.action for o in report.outcomes] == [Action.RECREATED]
    [new] = world.sandbox_subscriptions()
    assert new["id"] != old["id"]
    assert sorted(await world.queued_resync_users()) == sorted(world.user_ids.values())
    assert await ClientStates(world.redis, world.box).get_many([old["id"]]) == {}


async def test_expired_subscription_is_recreated_and_resynced(subscription_world: WorldFactory) -> None:
    world = await subscription_world(users=20, accounts=1)
    await world.run_pass()
    [old] = world.sandbox_subscriptions()
    world.handle.control("POST", f"/subscriptions/{old['id']}/expire")
    await world.redis.delete(keys.presence_stream(0))
    # Nothing yet: the existence check is not due and the renewal is far away.
    assert [o.action for o in (await world.run_pass()).outcomes] == [Action.NONE]
    # Renewal time: the PATCH gets 404, and the subscription is created anew.
    world.handle.advance(35 * 60)
    report = await world.run_pass()
    assert [o.action for o in report.outcomes] == [Action.RECREATED]
    assert len(world.sandbox_subscriptions()) == 1
    assert sorted(await world.queued_resync_users()) == sorted(world.user_ids.values())


async def test_consent_revoked_becomes_an_alert_not_a_crash(
    subscription_world: WorldFactory, caplog: pytest.LogCaptureFixture
) -> None:
    world = await subscription_world(users=700, accounts=2, pre_resolved=True)
    assert (await world.run_pass()).ok
    victim = world.accounts[0]
    world.handle.control("POST", "/consent/revoke", {"user": victim})
    await asyncio.sleep(0.1)  # the sandbox sends reauthorizationRequired to the lifecycle URL
    world.handle.advance(11 * 60)
    await asyncio.sleep(0.1)
    report = await world.run_pass()
    assert report.errors
    assert victim in report.errors[0]
    health = await world.scheduler.accounts.health()
    assert health[victim].state in (AccountState.CONSENT_REQUIRED, AccountState.FORBIDDEN)
    assert health[world.accounts[1]].state is AccountState.OK
    assert any("ALERT" in r.message and victim in r.message for r in caplog.records)
    # Passes go on for the healthy account, and the broken one stays an alert on every pass.
    again = await world.run_pass()
    assert again.leader
    assert again.errors
    assert any(o.account == world.accounts[1] for o in again.outcomes)


async def test_adding_a_user_recreates_only_their_shard(subscription_world: WorldFactory) -> None:
    world = await subscription_world(users=1301, accounts=3, pre_resolved=True)
    await world.run_pass()
    before = {s["creatorId"]: s for s in world.sandbox_subscriptions()}
    await world.redis.delete(keys.presence_stream(0))
    [email] = world.add_users(1)
    report = await world.run_pass()
    changed = [o for o in report.outcomes if o.action is not Action.NONE]
    assert [o.action for o in changed] == [Action.RECREATED]
    after = {s["creatorId"]: s for s in world.sandbox_subscriptions()}
    moved = [creator for creator in after if after[creator]["id"] != before[creator]["id"]]
    assert len(moved) == 1
    assert world.user_ids[email] in after[moved[0]]["userIds"]
    # Only the recreated shard is resynced, and it includes the new user.
    resynced = set(await world.queued_resync_users())
    assert resynced == set(after[moved[0]]["userIds"])


async def test_half_done_creation_is_finished_by_the_next_leader(subscription_world: WorldFactory) -> None:
    world = await subscription_world(users=5, accounts=1)
    await world.run_pass()
    [orphan] = world.sandbox_subscriptions()
    # A leader killed after Graph created the subscription but before the record was written.
    await world.redis.delete(keys.SUBSCRIPTION_STATE)
    report = await world.run_pass()
    assert [o.action for o in report.outcomes] == [Action.CREATED]
    [current] = world.sandbox_subscriptions()
    assert current["id"] != orphan["id"]  # the 409 was met by replacing the one we cannot verify


async def test_reauthorization_required_is_answered_by_a_patch_at_once(
    subscription_world: WorldFactory,
) -> None:
    world = await subscription_world(users=5, accounts=1)
    await world.run_pass()
    [sub] = world.sandbox_subscriptions()
    world.handle.control("POST", f"/subscriptions/{sub['id']}/reauthorization-required")
    await asyncio.sleep(0.2)
    # Right after the create: a PATCH is allowed (only /reauthorize and PATCH must be 10 min
    # apart, and the bridge never calls /reauthorize), so the answer does not wait.
    report = await world.run_pass()
    assert [o.action for o in report.outcomes] == [Action.REAUTHORIZED]
    assert report.errors == []
    world.handle.control("POST", f"/subscriptions/{sub['id']}/reauthorization-required")
    await asyncio.sleep(0.2)
    report = await world.run_pass()  # a second event soon after the first PATCH: again at once
    assert [o.action for o in report.outcomes] == [Action.REAUTHORIZED]
    assert report.errors == []


async def test_certificate_rotation_under_load_loses_no_notification(
    subscription_world: WorldFactory,
) -> None:
    world = await subscription_world(users=8, accounts=1)
    await world.run_pass()
    users = list(world.user_ids.values())
    states = [
        ("Busy", "InACall"),
        ("Available", "Available"),
        ("DoNotDisturb", "Presenting"),
        ("Away", "Away"),
    ]
    stop = threading.Event()
    sent: list[tuple[str, str, str]] = []

    def churn() -> None:
        step = 0
        while not stop.is_set():
            user = users[step % len(users)]
            availability, activity = states[(step // len(users)) % len(states)]
            world.handle.set_teams_presence(user, availability, activity)
            sent.append((user, availability, activity))
            step += 1

    worker = threading.Thread(target=churn)
    worker.start()
    try:
        await asyncio.sleep(0.3)
        old = await CertificateStore(world.redis, world.box).current()
        new = await CertificateStore(world.redis, world.box).rotate()
        report = await world.run_pass()
        assert [o.action for o in report.outcomes] == [Action.ROTATED]
        await asyncio.sleep(0.3)
    finally:
        stop.set()
        worker.join()
    [sub] = world.sandbox_subscriptions()
    assert sub["encryptionCertificateId"] == new.id
    await asyncio.sleep(0.5)  # last coalesced deliveries
    opened = await world.decrypt_all()
    used = {
        i["encryptedContent"]["encryptionCertificateId"] for i in world.receiver.items("graph/notifications")
    }
    assert used == {old.id, new.id}  # notifications under both keys arrived and opened
    last_sent = {user: (a, b) for user, a, b in sent}
    last_seen = {}
    for item in opened:
        last_seen[item["id"]] = (item["availability"], item["activity"])
    assert last_seen == last_sent


async def test_directory_outage_keeps_renewing_the_covered_users(subscription_world: WorldFactory) -> None:
    world = await subscription_world(users=6, accounts=1)
    await world.run_pass()
    [sub] = world.sandbox_subscriptions()

    async def broken() -> list[str]:
        raise ConnectionError("STARFACE directory unreachable")

    world.scheduler.emails = broken
    world.handle.advance(35 * 60)
    report = await world.run_pass()
    assert report.errors
    assert "user selection unavailable" in report.errors[0]
    assert [o.action for o in report.outcomes] == [Action.RENEWED]
    assert [s["id"] for s in world.sandbox_subscriptions()] == [sub["id"]]
