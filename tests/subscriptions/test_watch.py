"""The watch's verdicts in burst mode, against the Graph sandbox, the real worker and real Valkey:
what counts as a missed change, and the lags and latencies that must not."""

from __future__ import annotations

import json

from service.bridge.deliveries import note_notifications
from service.bridge.streams import append_presence_batch
from service.bridge.worker import PresenceWorker
from service.core import keys
from service.core.partitions import Partitions
from service.core.storage import decoded
from service.graph.certificates import CertificateStore
from service.graph.crypto import decrypt_content
from service.graph.presence import PresenceChange
from subscriptions.renewal import Action
from subscriptions.watch import PresenceWatch, seconds_per_round
from tests.fixtures.subscription_world import World, WorldFactory

GRACE = 60.0


class Bridge:
    """The parts of the bridge the watch relies on: the web tier's queueing (and its note of each
    notification's arrival) and a worker."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.partitions = Partitions(world.settings.redis_partitions)
        self.worker = PresenceWorker(world.redis, world.settings, self.partitions)
        self.forwarded = 0
        watch = world.scheduler.watch
        assert watch is not None
        self.watch: PresenceWatch = watch

    async def forward_notifications(self) -> int:
        """Queue the received notifications as the web tier does, decrypted, with their subscription."""
        await self.world.settle()
        items = self.world.receiver.items("graph/notifications")[self.forwarded :]
        self.forwarded += len(items)
        store = CertificateStore(self.world.redis, self.world.box)
        changes = []
        for item in items:
            encrypted = item["encryptedContent"]
            certificate = await store.get(encrypted["encryptionCertificateId"])
            assert certificate is not None
            content = json.loads(decrypt_content(encrypted, certificate.private_key))
            changes.append(PresenceChange.from_resource(content, subscription_id=item["subscriptionId"]))
        if changes:
            await append_presence_batch(self.world.redis, self.partitions, changes, 10_000)
            await note_notifications(self.world.redis, changes, self.world.handle.sandbox.clock.now())
        return len(changes)

    async def missed(self) -> dict[str, int]:
        raw = await self.world.redis.hgetall(keys.MISSED_CHANGES)
        return {decoded(k): int(v) for k, v in raw.items()}


async def started(subscription_world: WorldFactory, users: int = 4) -> tuple[World, Bridge, list[str]]:
    world = await subscription_world(
        users=users, accounts=1, settings_overrides={"MISSED_GRACE_SECONDS": "60"}
    )
    bridge = Bridge(world)
    report = await world.run_pass()
    assert report.ok, report.errors
    await bridge.worker.drain()  # the resync after creation: everyone observed
    return world, bridge, sorted(world.user_ids.values())


async def test_a_change_the_subscription_did_not_deliver_is_counted_and_the_subscription_recreated(
    subscription_world: WorldFactory,
) -> None:
    world, bridge, users = await started(subscription_world)
    [account] = world.accounts
    [subscription] = world.sandbox_subscriptions()
    world.handle.set_teams_presence(users[3], "Away", "Away")  # delivered before the silence
    assert await bridge.forward_notifications() == 1
    await bridge.worker.drain()
    world.handle.control("POST", f"/subscriptions/{subscription['id']}/silence")
    world.handle.set_teams_presence(users[0], "Busy", "InACall")
    found = await bridge.watch.tick()
    assert (found.reason, found.users, found.requests, found.changes) == ("watch", 4, 1, 1)
    assert await bridge.forward_notifications() == 0  # silent
    await bridge.worker.drain()
    observed = await world.redis.hgetall(keys.observed_presence(users[0]))
    assert (observed[b"availability"], observed[b"source"]) == (b"Busy", b"poll")  # applied already
    world.handle.advance(GRACE - 1)
    assert (await bridge.watch.tick()).missed == {}  # not before the grace time
    world.handle.advance(1)
    judged = await bridge.watch.tick()
    assert judged.missed == {account: 1}
    assert await bridge.missed() == {account: 1}
    assert subscription["id"] in decoded(await world.redis.hget(keys.SILENT_SUBSCRIPTIONS, account))
    # Only the silent shard's users are read between watch rounds.
    world.handle.advance(1)
    polled = await bridge.watch.tick()
    assert (polled.reason, polled.users, polled.changes) == ("silent", 4, 0)
    report = await world.run_pass()
    assert [o.action for o in report.outcomes] == [Action.RECREATED]
    [new] = world.sandbox_subscriptions()
    assert new["id"] != subscription["id"]
    # The new subscription delivers: the silence ends and only watch rounds read again.
    world.handle.set_teams_presence(users[1], "Away", "Away")
    assert await bridge.forward_notifications() == 1
    await bridge.worker.drain()
    world.handle.advance(1)
    after = await bridge.watch.tick()
    assert after.recovered == [account]
    assert await world.redis.hgetall(keys.SILENT_SUBSCRIPTIONS) == {}
    world.handle.advance(1)
    assert (await bridge.watch.tick()).users == 0
    assert await bridge.missed() == {account: 1}
    await world.run_pass()  # forgets when the replaced subscription last delivered
    assert await world.redis.hkeys(keys.SUBSCRIPTION_DELIVERED_AT) == [new["id"].encode()]


async def test_a_notification_slower_than_the_read_is_no_missed_change(
    subscription_world: WorldFactory,
) -> None:
    world, bridge, users = await started(subscription_world)
    world.handle.set_teams_presence(users[0], "DoNotDisturb", "Presenting")
    assert (await bridge.watch.tick()).changes == 1  # read before the notification was handled
    assert await bridge.forward_notifications() == 1
    await bridge.worker.drain()
    world.handle.advance(GRACE)
    assert (await bridge.watch.tick()).missed == {}
    assert await bridge.missed() == {}
    assert await world.redis.hgetall(keys.MISSED_SUSPECTS) == {}


async def test_a_resync_the_workers_have_not_applied_yet_is_no_missed_change(
    subscription_world: WorldFactory,
) -> None:
    world, bridge, users = await started(subscription_world)
    world.handle.set_teams_presence(users[2], "Busy", "InAMeeting")
    await world.settle()
    await world.redis.hset(keys.SCHEDULER_STATUS, "last_full_resync_at", "0")  # a full resync is due
    report = await world.run_pass()
    assert report.full_resync
    # The resync queued the meeting (and the notification is queued too), but no worker ran yet:
    # the watch reads a difference from the observed state.
    assert (await bridge.watch.tick()).changes == 1
    await bridge.worker.drain()
    bridge.forwarded = len(world.receiver.items("graph/notifications"))  # say the notification was lost
    world.handle.advance(GRACE)
    assert (await bridge.watch.tick()).missed == {}
    assert await bridge.missed() == {}


def test_a_round_stretches_to_stay_within_graph_throttling() -> None:
    assert seconds_per_round(10_000, 2.0) == 2.0  # 16 requests every 2 s: 240 per 30 s
    assert seconds_per_round(1_000, 0.5) == 0.5
    # 50,000 users are 77 requests: at most 1,000 per 30 s means one round every 2.31 s.
    assert round(seconds_per_round(50_000, 2.0), 2) == 2.31
