"""The leased subscription scheduler: one replica acts, every other one waits for the lease.

A pass (``run_once``) records lifecycle events, resolves the selected users, assigns them to
shards, brings every account's subscription in line (create, renew, roll the certificate,
recreate), and resyncs whatever needs it.  Every step starts from state in Redis, so a pass cut
short by a crash or a lost lease is completed by whichever replica holds the lease next.
``run_once(now)`` is the burst mode: tests drive hours of renewals through it with a sandbox clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from service.core import keys
from service.core.clock import Clock, SystemClock
from service.core.secretbox import SecretBox
from service.core.settings import Settings
from service.core.storage import decoded
from service.core.tls import client_context
from service.graph.certificates import CertificateStore
from service.graph.client import GraphClient, GraphError, RateLimiter
from service.graph.clientstate import ClientStates
from subscriptions import metrics
from subscriptions.accounts import ServiceAccounts
from subscriptions.lease import Lease, LeaseLost
from subscriptions.lifecycle import LifecycleHandler
from subscriptions.records import SubscriptionRecords
from subscriptions.renewal import AccountBlocked, Outcome, Renewal
from subscriptions.resync import Resync
from subscriptions.shards import CAPACITY, ShardStore, ShortfallError, assign
from subscriptions.tokens import TokenError, Tokens
from subscriptions.users import EmailSource, Resolution, UserDirectory
from subscriptions.watch import PresenceWatch, recreate_silent

log = logging.getLogger(__name__)


@dataclass
class PassReport:
    leader: bool
    now: float
    users: int = 0
    missing_emails: list[str] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    resynced: int = 0
    full_resync: bool = False
    errors: list[str] = field(default_factory=list)
    shortfall: ShortfallError | None = None

    @property
    def ok(self) -> bool:
        return self.leader and not self.errors and self.shortfall is None


class Scheduler:
    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        emails: EmailSource,
        accounts: ServiceAccounts,
        users: UserDirectory,
        renewal: Renewal,
        resync: Resync,
        records: SubscriptionRecords,
        lease: Lease,
        clock: Clock | None = None,
        resync_interval_seconds: float = 900,
        pass_interval_seconds: float = 60,
        capacity: int = CAPACITY,
        graph: GraphClient | None = None,
        on_resolution: Callable[[Resolution], Awaitable[None]] | None = None,
        watch: PresenceWatch | None = None,
    ) -> None:
        self.redis = redis
        # Reads that catch silent subscriptions, or in poll mode the only source of presence.
        self.watch = watch
        self._wake = asyncio.Event()
        # A pass (its resync sweeps) and a watch round never interleave (subscriptions/watch.py).
        self._turn = asyncio.Lock()
        if watch is not None:
            watch.on_silent = self._wake.set
        # Told every fresh e-mail -> Entra id resolution (the bridge links identities with it).
        self.on_resolution = on_resolution
        self.emails = emails
        self.accounts = accounts
        self.users = users
        self.renewal = renewal
        self.resync = resync
        self.records = records
        self.shards = ShardStore(redis)
        self.lease = lease
        self.clock: Clock = clock or SystemClock()
        self.resync_interval = resync_interval_seconds
        self.pass_interval = pass_interval_seconds
        self.capacity = capacity
        self.lifecycle = LifecycleHandler(records)
        self._lifecycle_consumer = self.lifecycle.consumer(redis, block_ms=0)
        self._group_ready = False
        self._graph = graph
        # The first pass this process leads sweeps everyone: notifications may have been missed
        # while no scheduler ran.
        self._started = False

    async def close(self) -> None:
        if self._graph is not None:
            await self._graph.close()

    # -- one pass -------------------------------------------------------------------------------

    async def run_once(self, now: float | None = None) -> PassReport:
        """One full pass if this replica holds (or can take) the lease; else a no-op report."""
        if not await self.lease.acquire():
            return PassReport(leader=False, now=self.clock.now() if now is None else now)
        now = self.clock.now() if now is None else now
        report = PassReport(leader=True, now=now)
        if self.watch is not None and self.watch.poll_mode:
            return await self._poll_pass(report)
        await self._record_lifecycle()
        if self.watch is not None:
            for account in await recreate_silent(self.records, await self.watch.silent()):
                log.warning("recreating the silent subscription of %s", account)
        assignment = await self._assignment(report)
        for account in self.accounts.accounts:
            await self.lease.ensure()
            members = assignment.get(account.lower(), [])
            try:
                report.outcomes.append(await self.renewal.ensure(account, members, now))
            except (TokenError, AccountBlocked, GraphError) as exc:
                # One broken account must not stop the others; its alert is already recorded.
                report.errors.append(str(exc))
                log.error("subscription of %s not maintained this pass: %s", account, exc)
        configured = {a.lower() for a in self.accounts.accounts}
        for account in (await self.records.all()).keys() - configured:
            await self.lease.ensure()
            try:
                report.outcomes.append(await self.renewal.ensure(account, [], now))
            except (TokenError, AccountBlocked, GraphError) as exc:
                report.errors.append(str(exc))
        await self._resync(assignment, report, now)
        records = (await self.records.all()).values()
        retired = await self.renewal.certificates.retire_unused({r.certificate_id for r in records}, now)
        for certificate_id in retired:
            log.info("encryption certificate %s retired: no subscription used it for hours", certificate_id)
        metrics.SUBSCRIPTIONS_ACTIVE.set(sum(1 for r in records if r.id))
        if self.watch is not None:
            await self.watch.forget_gone({r.id for r in records if r.id})
        await self._write_status(report)
        return report

    async def _record_lifecycle(self) -> None:
        if not self._group_ready:
            await self._lifecycle_consumer.ensure_group()
            self._group_ready = True
        await self._lifecycle_consumer.drain()

    async def _poll_pass(self, report: PassReport) -> PassReport:
        """Poll mode: no subscriptions; the users to read are resolved, and leftovers deleted."""
        assert self.watch is not None
        resolution = await self._resolve(report)
        if resolution is not None:
            wanted = {u.lower() for u in resolution.user_ids}
            if resolution.unresolved:
                wanted |= set(await self.watch.poll_users())
            report.users = len(wanted)
            await self.watch.save_poll_users(wanted)
        else:
            report.users = len(await self.watch.poll_users())
        # Subscriptions left from subscription mode would deliver twice what the polls read.
        for account in await self.records.all():
            try:
                report.outcomes.append(await self.renewal.ensure(account, [], report.now))
            except (TokenError, AccountBlocked, GraphError) as exc:
                report.errors.append(str(exc))
        await self._write_status(report)
        return report

    async def _resolve(self, report: PassReport) -> Resolution | None:
        """The selected e-mails resolved to Entra ids; None (and an error) when that is impossible now."""
        try:
            emails = await self.emails()
            resolution = await self.users.resolve(emails)
        except Exception as exc:
            report.errors.append(f"user selection unavailable: {type(exc).__name__}: {exc}")
            log.error("user selection unavailable, keeping the previous users: %s", exc)
            return None
        report.missing_emails = resolution.missing
        if self.on_resolution is not None:
            await self.on_resolution(resolution)
        if resolution.missing:
            log.warning(
                "%d selected e-mails match no Entra user: %s",
                len(resolution.missing),
                ", ".join(resolution.missing[:20]),
            )
        return resolution

    async def _assignment(self, report: PassReport) -> dict[str, list[str]]:
        previous = await self.shards.load()
        resolution = await self._resolve(report)
        if resolution is None:
            # Directory or Graph lookups down: renewals must go on for the users we already cover.
            report.users = sum(len(m) for m in previous.values())
            configured = {a.lower() for a in self.accounts.accounts}
            return {a: list(m) for a, m in previous.items() if a in configured}
        # A user whose lookup failed just now keeps the place the previous pass gave them.
        wanted = {u.lower() for u in resolution.user_ids}
        if resolution.unresolved:
            wanted |= {u for members in previous.values() for u in members}
        report.users = len(wanted)
        try:
            assignment = assign(previous, wanted, self.accounts.accounts, self.capacity)
        except ShortfallError as exc:
            report.shortfall = exc
            metrics.ACCOUNTS_MISSING.set(exc.missing)
            log.error("ALERT %s", exc)
            # Keep covering whom we can: the previous shards stay as they are.
            return {a: [u for u in members if u in wanted] for a, members in previous.items()}
        metrics.ACCOUNTS_MISSING.set(0)
        await self.shards.save(assignment, previous)
        return assignment

    async def _resync(self, assignment: dict[str, list[str]], report: PassReport, now: float) -> None:
        raw_last = await self.redis.hget(keys.SCHEDULER_STATUS, "last_full_resync_at")
        last_full = float(raw_last) if raw_last is not None else 0.0
        records = await self.records.all()
        everyone = sorted({u for members in assignment.values() for u in members})
        try:
            if not self._started or now - last_full >= self.resync_interval:
                await self.lease.ensure()
                report.resynced += await self.resync.sweep(everyone)
                report.full_resync = True
                await self.redis.hset(keys.SCHEDULER_STATUS, "last_full_resync_at", str(now))
                self._started = True
                due = [r for r in records.values() if r.resync_needed]
                swept: set[str] = set(everyone)
            else:
                due = [r for r in records.values() if r.resync_needed]
                swept = set()
            for record in due:
                members = [u for u in assignment.get(record.account, []) if u not in swept]
                if members:
                    await self.lease.ensure()
                    report.resynced += await self.resync.sweep(members)
                # Re-read: only the flag changes, everything else stays as the renewal left it.
                fresh = await self.records.get(record.account)
                if fresh is not None and fresh.id == record.id:
                    fresh.resync_needed = False
                    await self.records.put(fresh)
        except (GraphError, TokenError) as exc:
            report.errors.append(f"resync: {exc}")
            log.error("resync incomplete, retried next pass: %s", exc)

    async def _write_status(self, report: PassReport) -> None:
        await self.redis.hset(
            keys.SCHEDULER_STATUS,
            mapping={
                "last_pass_at": str(report.now),
                "leader": socket.gethostname(),
                "users": str(report.users),
                "missing_emails": json.dumps(report.missing_emails),
                "shortfall": str(report.shortfall) if report.shortfall else "",
                "errors": json.dumps(report.errors[:20]),
            },
        )

    # -- forever --------------------------------------------------------------------------------

    async def run_forever(self, stop: asyncio.Event) -> None:
        """Contend for the lease and run passes until ``stop``; releases the lease on the way out."""
        keeper = asyncio.create_task(self._keep_lease(stop))
        watcher = asyncio.create_task(self._watch_forever(stop)) if self.watch is not None else None
        try:
            while not stop.is_set():
                try:
                    async with self._turn:
                        report = await self.run_once()
                    wait = self.pass_interval if report.leader else self.lease.ttl_ms / 3000
                except LeaseLost:
                    log.warning("scheduler lease lost mid-pass; another replica continues")
                    wait = self.lease.ttl_ms / 3000
                except (aioredis.RedisError, OSError) as exc:
                    log.error("scheduler pass failed, retrying: %s", exc)
                    wait = self.lease.ttl_ms / 3000
                except Exception:
                    # Never a crash loop: log with the traceback and try again next interval.
                    log.exception("scheduler pass failed")
                    wait = self.pass_interval
                await self._pause(stop, wait)
        finally:
            for task in (keeper, watcher):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            with contextlib.suppress(aioredis.RedisError, OSError):
                await self.lease.release()

    async def _pause(self, stop: asyncio.Event, seconds: float) -> None:
        """Until the next pass: ``seconds``, or sooner when a silent subscription needs recreating."""
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
            self._wake.clear()

    async def _watch_forever(self, stop: asyncio.Event) -> None:
        """Watch and poll rounds while this replica holds the lease (real time, like the lease)."""
        assert self.watch is not None
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            started = loop.time()
            interval = self.watch.poll_seconds
            try:
                if await self.lease.holder() == self.lease.token:
                    if self.watch.poll_mode:  # no resync to keep apart from, and a pass may be long
                        interval = (await self.watch.tick()).interval
                    else:
                        async with self._turn:
                            interval = (await self.watch.tick()).interval
            except (GraphError, TokenError, aioredis.RedisError, OSError) as exc:
                log.warning("presence watch round failed, trying again: %s", exc)
            except Exception:
                log.exception("presence watch round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=max(0.0, interval - (loop.time() - started)))

    async def _keep_lease(self, stop: asyncio.Event) -> None:
        # Real time on purpose: the lease TTL runs on Redis' clock, not on a simulated one.
        interval = self.lease.ttl_ms / 3000
        while not stop.is_set():
            await asyncio.sleep(interval)
            with contextlib.suppress(aioredis.RedisError, OSError):
                if await self.lease.holder() == self.lease.token:
                    await self.lease.renew()


def build_scheduler(
    settings: Settings,
    redis: aioredis.Redis,
    emails: EmailSource,
    *,
    clock: Clock | None = None,
    pass_interval_seconds: float = 60,
    graph_rate_limit: int = 1500,
    graph_rate_window_seconds: float = 30,
    client_certificate_pfx: str | None = None,
    lease_seconds: float | None = None,
    renewal_options: dict[str, float] | None = None,
    on_resolution: Callable[[Resolution], Awaitable[None]] | None = None,
) -> Scheduler:
    """Wire a scheduler from settings; the caller awaits ``run_forever`` or ``run_once`` and ``close``."""
    clock = clock or SystemClock()
    box = SecretBox.from_settings(settings)
    tokens = Tokens.from_settings(redis, settings, client_certificate_pfx=client_certificate_pfx)
    accounts = tokens.accounts
    graph = GraphClient(
        settings.graph_base_url,
        ssl_context=client_context(settings.extra_ca_file),
        clock=clock,
        limiter=RateLimiter(graph_rate_limit, graph_rate_window_seconds, clock),
    )
    records = SubscriptionRecords(redis)
    resync = Resync(
        redis,
        graph,
        tokens.app_token,
        partitions=settings.partitions,
        stream_maxlen=settings.presence_stream_maxlen,
    )
    renewal = Renewal(
        graph,
        tokens,
        accounts,
        CertificateStore(redis, box),
        ClientStates(redis, box),
        records,
        public_base_url=settings.public_base_url,
        clock=clock,
        **(renewal_options or {}),
    )
    return Scheduler(
        redis,
        emails=emails,
        accounts=accounts,
        users=UserDirectory(
            redis, graph, tokens.app_token, clock=clock, match_order=settings.user_match_order
        ),
        renewal=renewal,
        resync=resync,
        records=records,
        lease=Lease(redis, keys.SCHEDULER_LEASE, lease_seconds or settings.scheduler_lease_seconds),
        clock=clock,
        resync_interval_seconds=settings.resync_interval_seconds,
        pass_interval_seconds=pass_interval_seconds,
        graph=graph,
        on_resolution=on_resolution,
        watch=PresenceWatch(
            redis,
            resync,
            records,
            poll_mode=settings.presence_source == "poll",
            poll_seconds=settings.poll_seconds,
            watch_seconds=settings.watch_seconds,
            grace_seconds=settings.missed_grace_seconds,
            clock=clock,
        ),
    )


async def status(redis: aioredis.Redis, accounts: Sequence[str]) -> dict[str, Any]:
    """Everything an operator needs about subscriptions, for ``presence-bridge status``."""
    raw = await redis.hgetall(keys.SCHEDULER_STATUS)
    summary = {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in raw.items()
    }
    account_status = await redis.hgetall(keys.ACCOUNT_STATUS)
    health = {(k.decode() if isinstance(k, bytes) else k): json.loads(v) for k, v in account_status.items()}
    records = await SubscriptionRecords(redis).all()
    silent = {decoded(k): json.loads(v) for k, v in (await redis.hgetall(keys.SILENT_SUBSCRIPTIONS)).items()}
    missed = {decoded(k): int(v) for k, v in (await redis.hgetall(keys.MISSED_CHANGES)).items()}
    return {
        "scheduler": summary,
        "silent": silent,
        "missed_changes": missed,
        "poll": {decoded(k): decoded(v) for k, v in (await redis.hgetall(keys.POLL_STATUS)).items()},
        "accounts": {
            a.lower(): {
                "health": health.get(a.lower(), {"state": "ok", "reason": ""}),
                "subscription": {
                    "id": records[a.lower()].id,
                    "users": records[a.lower()].user_count,
                    "expires_at": records[a.lower()].expires_at,
                }
                if a.lower() in records
                else None,
            }
            for a in accounts
        },
    }
