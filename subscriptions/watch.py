"""Never silently stop: presence reads that catch what change notifications did not bring.

Presence subscriptions have no ``missed`` lifecycle event (docs/protocols.md, "Lifecycle
notifications"), and a subscription can stop firing for days while Graph still answers reads.
Waiting for the 15-minute resync would hide that.  So, under the scheduler's lease:

* the *watch* reads every subscribed user's presence every ``WATCH_SECONDS`` and queues whatever
  differs from the observed state, through the presence stream like a notification;
* such a difference is a *suspect*.  It becomes a *missed change* of the user's subscription when
  no change notification for that user is handled within ``MISSED_GRACE_SECONDS`` after the read
  (Microsoft states one minute as the longest notification latency) and the user's observed state
  is still the one the watch queued.  A notification handled after the read clears it, even one
  carrying an older state, and so does a resync entry that was queued first and applied late:
  only silence is counted.  The scheduler never runs a pass and a watch round at the same time,
  so a resync's entries are always queued before the watch reads;
* a subscription with a missed change is *silent*: the next scheduler pass recreates it, ``status``
  names it, and its users are read every ``POLL_SECONDS`` until a notification of the account's
  subscription is handled again;
* in poll mode (``PRESENCE_SOURCE=poll``) there are no subscriptions: every user is read every
  ``POLL_SECONDS`` and only differences are queued.

The web tier records when each user and each subscription was last heard of
(service/bridge/deliveries.py).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import redis.asyncio as aioredis

from service.core import keys, metrics
from service.core.clock import Clock, SystemClock
from service.core.settings import (
    POLL_REQUESTS_PER_WINDOW,
    PRESENCE_IDS_PER_READ,
    PRESENCE_WINDOW_SECONDS,
)
from service.core.storage import decoded
from service.graph.presence import PresenceChange
from subscriptions.records import SubscriptionRecords
from subscriptions.resync import Resync
from subscriptions.shards import ShardStore

log = logging.getLogger(__name__)

# The source of queued changes that a read (not a notification) found.
POLL_SOURCE = "poll"


@dataclass
class Silence:
    """An account whose subscription was found silent, until a notification of it is handled again."""

    account: str
    subscription_id: str
    detected_at: float
    missed: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: bytes | str) -> Silence:
        return cls(**json.loads(raw))


@dataclass(frozen=True)
class Round:
    """One tick: what was read, what was queued, what was judged missed, when to tick again."""

    reason: str
    users: int
    requests: int
    changes: int
    missed: dict[str, int]
    recovered: list[str]
    interval: float


def seconds_per_round(users: int, poll_seconds: float) -> float:
    """The interval a round of ``users`` can keep within the share of Graph's window polling may use."""
    requests = math.ceil(users / PRESENCE_IDS_PER_READ)
    return max(poll_seconds, requests * PRESENCE_WINDOW_SECONDS / POLL_REQUESTS_PER_WINDOW)


class PresenceWatch:
    def __init__(
        self,
        redis: aioredis.Redis,
        reads: Resync,
        records: SubscriptionRecords,
        *,
        poll_mode: bool = False,
        poll_seconds: float = 2.0,
        watch_seconds: float = 60.0,
        grace_seconds: float = 60.0,
        clock: Clock | None = None,
    ) -> None:
        self.redis = redis
        self.reads = reads
        self.records = records
        self.shards = ShardStore(redis)
        self.poll_mode = poll_mode
        self.poll_seconds = poll_seconds
        self.watch_seconds = watch_seconds
        self.grace = grace_seconds
        self.clock: Clock = clock or SystemClock()
        self._last_watch: float | None = None
        # Told when a subscription is found silent, so its recreation need not wait for the next pass.
        self.on_silent: Callable[[], None] | None = None

    async def tick(self, now: float | None = None) -> Round:
        now = self.clock.now() if now is None else now
        if self.poll_mode:
            return await self._poll_everyone(now)
        silent = await self.silent()
        recovered = await self._recovered(silent, now)
        shards = await self.shards.load()
        owner = {user: account for account, members in shards.items() for user in members}
        if self.watch_seconds > 0 and (
            self._last_watch is None or now - self._last_watch >= self.watch_seconds
        ):
            self._last_watch = now
            reason, users = "watch", sorted(owner)
        else:
            reason = "silent"
            users = sorted(u for a in silent if a not in recovered for u in shards.get(a, []))
        requests = changes = 0
        if users:
            sweep = await self.reads.sweep_changed(users, POLL_SOURCE)
            requests, changes = sweep.requests, len(sweep.changed)
            metrics.PRESENCE_READS.labels(reason).inc(requests)
            metrics.PRESENCE_READ_CHANGES.labels(reason).inc(changes)
            await self._suspect(sweep.changed, owner, read_at=now)
        missed = await self._judge(now)
        return Round(reason, len(users), requests, changes, missed, recovered, self.poll_seconds)

    # -- poll mode ------------------------------------------------------------------------------

    async def poll_users(self) -> list[str]:
        raw = await self.redis.get(keys.POLL_USERS)
        return list(json.loads(raw)) if raw else []

    async def save_poll_users(self, users: set[str]) -> None:
        await self.redis.set(keys.POLL_USERS, json.dumps(sorted(users)))

    async def _poll_everyone(self, now: float) -> Round:
        users = await self.poll_users()
        interval = seconds_per_round(len(users), self.poll_seconds)
        if interval > self.poll_seconds:
            log.warning(
                "ALERT %d users cannot be polled every %g s within Graph's throttling; every %.1f s instead",
                len(users),
                self.poll_seconds,
                interval,
            )
        sweep = await self.reads.sweep_changed(users, POLL_SOURCE)
        metrics.PRESENCE_READS.labels("poll").inc(sweep.requests)
        metrics.PRESENCE_READ_CHANGES.labels("poll").inc(len(sweep.changed))
        await self.redis.hset(
            keys.POLL_STATUS,
            mapping={
                "at": repr(now),
                "users": str(len(users)),
                "requests": str(sweep.requests),
                "changes": str(len(sweep.changed)),
                "interval": repr(interval),
            },
        )
        return Round("poll", len(users), sweep.requests, len(sweep.changed), {}, [], interval)

    # -- detection ------------------------------------------------------------------------------

    async def _suspect(self, changed: list[PresenceChange], owner: dict[str, str], *, read_at: float) -> None:
        records = await self.records.all()
        suspects: dict[str, str] = {}
        for change in changed:
            account = owner.get(change.user_id)
            record = records.get(account) if account else None
            if record is None or record.id is None:
                continue  # no subscription covers the user: nothing could have been delivered
            suspects[change.user_id] = json.dumps(
                {"account": record.account, "subscription_id": record.id, "read_at": read_at}
            )
        if suspects:
            # The earliest unexplained read stands: a second difference must not postpone the verdict.
            async with self.redis.pipeline(transaction=False) as pipe:
                for user, value in suspects.items():
                    pipe.hsetnx(keys.MISSED_SUSPECTS, user, value)
                await pipe.execute()

    async def _judge(self, now: float) -> dict[str, int]:
        """Suspects past the grace time: missed unless a notification for the user was handled since."""
        raw = await self.redis.hgetall(keys.MISSED_SUSPECTS)
        due = {decoded(k): json.loads(v) for k, v in raw.items()}
        due = {user: s for user, s in due.items() if now - float(s["read_at"]) >= self.grace}
        if not due:
            return {}
        users = sorted(due)
        notified = await self.redis.hmget(keys.NOTIFIED_AT, users)
        async with self.redis.pipeline(transaction=False) as pipe:
            for user in users:
                pipe.hget(keys.observed_presence(user), "source")
            sources = await pipe.execute()
        records = await self.records.all()
        missed: dict[str, int] = {}
        for user, heard, source in zip(users, notified, sources, strict=True):
            suspect = due[user]
            if heard is not None and float(heard) >= float(suspect["read_at"]):
                continue  # a notification came after the read: the subscription delivers
            if source is None or decoded(source) != POLL_SOURCE:
                # Another read queued the same state before the watch's (a resync the workers had
                # not applied yet): the observed state lagged; Graph did not stay silent.
                continue
            record = records.get(suspect["account"])
            if (
                record is None
                or record.id != suspect["subscription_id"]
                or record.created_at > suspect["read_at"]
            ):
                continue  # that subscription is gone; the resync after its recreation repaired the user
            missed[record.account] = missed.get(record.account, 0) + 1
        await self.redis.hdel(keys.MISSED_SUSPECTS, *users)
        for account, count in missed.items():
            await self._silent(account, records[account].id or "", count, now)
        return missed

    async def _silent(self, account: str, subscription_id: str, count: int, now: float) -> None:
        await self.redis.hincrby(keys.MISSED_CHANGES, account, count)
        metrics.MISSED_CHANGES.labels(account).inc(count)
        raw = await self.redis.hget(keys.SILENT_SUBSCRIPTIONS, account)
        silence = Silence.from_json(raw) if raw else Silence(account, subscription_id, now)
        silence.subscription_id = subscription_id
        silence.missed += count
        await self.redis.hset(keys.SILENT_SUBSCRIPTIONS, account, silence.to_json())
        log.error(
            "ALERT subscription %s of %s stopped delivering: %d missed change(s); recreating it "
            "and reading its users every %g s until it delivers again",
            subscription_id,
            account,
            count,
            self.poll_seconds,
        )
        if self.on_silent is not None:
            self.on_silent()

    async def forget_gone(self, current: set[str]) -> None:
        """Drop the delivery times of subscriptions that no longer exist: each recreation adds one."""
        gone = [
            i
            for i in map(decoded, await self.redis.hkeys(keys.SUBSCRIPTION_DELIVERED_AT))
            if i not in current
        ]
        if gone:
            await self.redis.hdel(keys.SUBSCRIPTION_DELIVERED_AT, *gone)

    async def silent(self) -> dict[str, Silence]:
        raw = await self.redis.hgetall(keys.SILENT_SUBSCRIPTIONS)
        return {decoded(k): Silence.from_json(v) for k, v in raw.items()}

    async def _recovered(self, silent: dict[str, Silence], now: float) -> list[str]:
        """Silent accounts whose current subscription has delivered since the silence was found."""
        if not silent:
            return []
        records = await self.records.all()
        recovered = []
        for account, silence in silent.items():
            record = records.get(account)
            if record is None:  # the account left the configuration: nothing to wait for
                recovered.append(account)
                continue
            current = record.id or silence.subscription_id
            heard = await self.redis.hget(keys.SUBSCRIPTION_DELIVERED_AT, current)
            if heard is not None and float(heard) > silence.detected_at:
                recovered.append(account)
                log.info(
                    "subscription %s of %s delivers again; its users are no longer polled", current, account
                )
        if recovered:
            await self.redis.hdel(keys.SILENT_SUBSCRIPTIONS, *recovered)
        return recovered


async def recreate_silent(records: SubscriptionRecords, silent: dict[str, Silence]) -> list[str]:
    """Ask the renewal to recreate each silent subscription that is still the account's current one."""
    asked = []
    for account, silence in silent.items():
        record = await records.get(account)
        if record is not None and record.id == silence.subscription_id and not record.recreate_requested:
            record.recreate_requested = True
            record.resync_needed = True
            await records.put(record)
            asked.append(account)
    return asked
