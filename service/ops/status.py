"""``presence-bridge status``: one look at everything an operator needs, read from Redis only.

Subscriptions (shard, users, expiry), service-account token health, queue depth and lag, dead
letters, STARFACE directory and UCI sessions, dropped notifications, and users whose last
reconcile failed.  Nothing here needs Graph or STARFACE to answer, so it works during an outage.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from service.core import heartbeat, keys
from service.core.partitions import Partitions, most_used
from service.core.settings import Settings
from service.core.storage import decoded
from service.starface.directory import DirectoryStore
from service.starface.sessions import SessionStatus
from subscriptions.scheduler import status as subscription_status


def _streams(partitions: Partitions) -> list[tuple[str, list[str], str]]:
    """Each kind of stream, the keys it is kept under, and the consumer group that reads it."""
    return [
        ("presence", [*partitions.presence_streams(), keys.LEGACY_PRESENCE_STREAM], keys.WORKER_GROUP),
        ("call events", [*partitions.call_streams(), keys.LEGACY_CALL_STREAM], keys.CALL_GROUP),
        ("lifecycle", [keys.LIFECYCLE_STREAM], keys.LIFECYCLE_GROUP),
    ]


def _entry_time(entry_id: str) -> float:
    return int(entry_id.split("-", 1)[0]) / 1000


async def _stream(redis: aioredis.Redis, stream: str, group: str, now: float) -> dict[str, Any]:
    length = int(await redis.xlen(stream))
    result: dict[str, Any] = {"length": length, "pending": 0, "lag": 0, "oldest_pending_age": None}
    try:
        groups: Any = await redis.xinfo_groups(stream)
    except ResponseError:
        return result  # no stream yet
    for info in groups:
        if decoded(info.get("name")) != group:
            continue
        result["pending"] = int(info.get("pending") or 0)
        result["lag"] = int(info.get("lag") or 0)
        if result["pending"]:
            first: Any = await redis.xpending_range(stream, group, "-", "+", 1)
            if first:
                result["oldest_pending_age"] = round(now - _entry_time(decoded(first[0]["message_id"])), 1)
    return result


async def streams(redis: aioredis.Redis, now: float, partitions: Partitions) -> dict[str, dict[str, Any]]:
    """Depth, lag, work in progress and oldest pending age of every stream the bridge reads,
    summed over the partitions (the oldest pending age is the oldest of any partition)."""
    report: dict[str, dict[str, Any]] = {}
    for name, stream_keys, group in _streams(partitions):
        parts = [await _stream(redis, key, group, now) for key in stream_keys]
        ages = [p["oldest_pending_age"] for p in parts if p["oldest_pending_age"] is not None]
        report[name] = {
            "length": sum(p["length"] for p in parts),
            "pending": sum(p["pending"] for p in parts),
            "lag": sum(p["lag"] for p in parts),
            "oldest_pending_age": max(ages, default=None),
        }
    return report


async def uci_sessions(redis: aioredis.Redis) -> list[SessionStatus]:
    """Every readable UCI session status (``status`` lists them; the gauges count them)."""
    sessions = [SessionStatus.from_json(v) for v in await redis.hvals(keys.UCI_SESSIONS)]
    return [s for s in sessions if s is not None]


async def workers_alive(redis: aioredis.Redis, now: float) -> int:
    """Worker processes whose heartbeat in Redis is recent enough to count them as running."""
    return int(await redis.zcount(keys.LIVE_WORKERS, now - heartbeat.WORKER_ALIVE_SECONDS, "+inf"))


async def collect(redis: aioredis.Redis, settings: Settings, *, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    report: dict[str, Any] = {"at": now}
    report["subscriptions"] = await subscription_status(redis, settings.graph_service_accounts)
    partitions = await most_used(redis, settings.partitions)
    report["partitions"] = partitions.count
    report["streams"] = await streams(redis, now, partitions)
    report["dead_letters"] = int(await redis.xlen(keys.DEAD_LETTER_STREAM))
    last_dead: Any = await redis.xrevrange(keys.DEAD_LETTER_STREAM, count=3)
    report["last_dead_letters"] = [
        {
            decoded(k): decoded(v)
            for k, v in fields.items()
            if decoded(k) in ("stream", "reason", "deliveries")
        }
        for _, fields in last_dead
    ]
    dropped = await redis.hgetall(keys.DROPPED_COUNTS)
    report["dropped_notifications"] = {decoded(k): int(v) for k, v in dropped.items()}
    known = await uci_sessions(redis)
    report["starface_sessions"] = {
        "up": sum(1 for s in known if s.error is None),
        "down": [s.describe() for s in known if s.error is not None],
    }
    directory = await DirectoryStore(redis).status()
    report["directory"] = directory.describe()
    report["failing_users"] = await _failing_users(redis)
    report["workers_alive"] = await workers_alive(redis, now)
    report["scheduler_lease"] = decoded(await redis.get(keys.SCHEDULER_LEASE) or b"") or None
    report["problems"] = _problems(report, settings, directory.refreshed_at, now)
    return report


def _problems(
    report: dict[str, Any], settings: Settings, directory_refreshed_at: float | None, now: float
) -> list[str]:
    """Every reason the bridge is not doing its job, each in words an operator can act on."""
    problems: list[str] = []
    if not report["workers_alive"]:
        problems.append("no worker is alive: start `presence-bridge serve --role worker` (or --role all)")
    if not report["scheduler_lease"]:
        problems.append("no scheduler holds the lease: start `presence-bridge serve --role scheduler`")
    subs = report["subscriptions"]
    scheduler = subs.get("scheduler", {})
    # Late by more than two periods and a lease hand-over: a pass was missed, not merely slow.
    pass_deadline = 2 * settings.scheduler_pass_seconds + settings.scheduler_lease_seconds
    last_pass = scheduler.get("last_pass_at")
    if last_pass in (None, ""):
        problems.append("the scheduler never completed a pass")
    elif now - float(last_pass) > pass_deadline:
        problems.append(f"the last scheduler pass is {(now - float(last_pass)) / 60:.0f} min old")
    refresh_deadline = 2 * settings.starface_directory_refresh_seconds + 60
    if directory_refreshed_at is None:
        problems.append("the STARFACE directory was never read")
    elif now - directory_refreshed_at > refresh_deadline:
        problems.append(
            f"the STARFACE directory was last read {(now - directory_refreshed_at) / 60:.0f} min ago"
        )
    accounts = subs["accounts"]
    if settings.presence_source == "poll":
        problems.extend(_poll_problems(subs["poll"], settings, now))
    elif not accounts:
        problems.append("no service account can hold a subscription: set GRAPH_SERVICE_ACCOUNTS")
    for account, silence in sorted(subs["silent"].items()):
        problems.append(
            f"subscription {silence['subscription_id']} of {account} stopped delivering: "
            f"{silence['missed']} missed change(s) since {_clock(silence['detected_at'])}; the bridge "
            f"recreates it and reads its users every {settings.poll_seconds:g} s until notifications "
            "arrive again. If this stays, check Microsoft 365 service health and the account's "
            "sign-in; PRESENCE_SOURCE=poll runs without subscriptions"
        )
    for account, info in accounts.items():
        if info["health"].get("state") != "ok":
            problems.append(f"service account {account}: {info['health'].get('state')}")
    if scheduler.get("shortfall"):
        problems.append(str(scheduler["shortfall"]))
    if report["dead_letters"]:
        problems.append(f"{report['dead_letters']} dead letter(s): see `presence-bridge dead-letters list`")
    if report["starface_sessions"]["down"]:
        problems.append(f"{len(report['starface_sessions']['down'])} STARFACE session(s) down")
    if report["failing_users"]:
        problems.append(f"{len(report['failing_users'])} user(s) whose last reconcile failed")
    return problems


def _poll_problems(poll: dict[str, str], settings: Settings, now: float) -> list[str]:
    """Poll mode stops only visibly: a late round or an interval Graph's throttling cannot carry."""
    if not poll.get("at"):
        return ["poll mode has not read any presence yet: is a scheduler running?"]
    problems = []
    interval = float(poll.get("interval") or settings.poll_seconds)
    age = now - float(poll["at"])
    if age > max(3 * interval, 30):
        problems.append(f"the last presence poll round is {age:.0f} s old (every {interval:g} s expected)")
    if interval > settings.poll_seconds:
        problems.append(
            f"{poll.get('users')} users cannot be read every {settings.poll_seconds:g} s within Graph's "
            f"throttling: every {interval:.1f} s instead; raise POLL_SECONDS or poll fewer users"
        )
    return problems


def _clock(epoch: Any) -> str:
    return dt.datetime.fromtimestamp(float(epoch), dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


async def _failing_users(redis: aioredis.Redis, limit: int = 20) -> list[str]:
    logins = {decoded(k): decoded(v) for k, v in (await redis.hgetall(keys.IDENTITY_LOGIN_BY_USER)).items()}
    ordered = sorted(logins.items(), key=lambda item: item[1])
    # One round trip for every user's last error, however many users are bridged.
    async with redis.pipeline(transaction=False) as pipe:
        for user_id, _ in ordered:
            pipe.hget(keys.user_bridge(user_id), "last_error")
        errors = await pipe.execute()
    failing = [
        f"login {login}: {decoded(error)}" for (_, login), error in zip(ordered, errors, strict=True) if error
    ]
    return failing[:limit]


def _when(epoch: Any, now: float) -> str:
    if epoch in (None, ""):
        return "never"
    seconds = float(epoch) - now
    stamp = dt.datetime.fromtimestamp(float(epoch), dt.UTC).strftime("%H:%M:%SZ")
    return (
        f"{stamp} (in {seconds / 60:.0f} min)" if seconds >= 0 else f"{stamp} ({-seconds / 60:.0f} min ago)"
    )


def render(report: dict[str, Any]) -> str:
    now = float(report["at"])
    lines: list[str] = []
    subs = report["subscriptions"]
    scheduler = subs.get("scheduler", {})
    lines.append(
        f"Subscriptions (last scheduler pass: {_when(scheduler.get('last_pass_at'), now)}, "
        f"leader {scheduler.get('leader') or 'none'})"
    )
    if scheduler.get("shortfall"):
        lines.append(f"  ALERT {scheduler['shortfall']}")
    if not subs["accounts"] and not subs["poll"].get("at"):
        lines.append("  no service accounts configured (GRAPH_SERVICE_ACCOUNTS)")
    for account, info in subs["accounts"].items():
        health = info["health"]
        sub = info["subscription"]
        where = (
            "no subscription"
            if not sub or not sub.get("id")
            else (f"{sub['users']} users, expires {_when(sub['expires_at'], now)}")
        )
        alert = (
            "" if health.get("state") == "ok" else f"  ALERT {health.get('state')}: {health.get('reason')}"
        )
        lines.append(f"  {account}: {where}{alert}")
    for account, silence in sorted(subs["silent"].items()):
        lines.append(
            f"  ALERT {account}: subscription {silence['subscription_id']} silent since "
            f"{_when(silence['detected_at'], now)}, {silence['missed']} missed change(s), users polled"
        )
    missed = subs["missed_changes"]
    if missed:
        lines.append("  missed changes (ever): " + ", ".join(f"{a} {n}" for a, n in sorted(missed.items())))
    poll = subs["poll"]
    if poll.get("at"):
        lines.append(
            f"  poll mode: {poll['users']} users every {float(poll['interval']):g} s, "
            f"{poll['requests']} request(s) a round, last round {_when(poll['at'], now)}"
        )
    missing = json.loads(scheduler.get("missing_emails") or "[]")
    if missing:
        lines.append(f"  {len(missing)} e-mail(s) match no Teams user: {', '.join(missing[:10])}")
    lines.append("Queues")
    for name, info in report["streams"].items():
        age = info["oldest_pending_age"]
        lines.append(
            f"  {name}: {info['length']} entries, {info['lag']} not yet read, {info['pending']} in work"
            + (f" (oldest {age}s)" if age is not None else "")
        )
    lines.append(f"  dead letters: {report['dead_letters']}")
    for dead in report["last_dead_letters"]:
        lines.append(
            f"    {dead.get('stream', '?')}: {dead.get('reason', '')} after {dead.get('deliveries')} tries"
        )
    dropped = report["dropped_notifications"]
    if dropped:
        lines.append("  dropped notifications: " + ", ".join(f"{k} {v}" for k, v in sorted(dropped.items())))
    sessions = report["starface_sessions"]
    lines.append(f"STARFACE sessions: {sessions['up']} up, {len(sessions['down'])} down")
    lines += [f"  {line}" for line in sessions["down"][:20]]
    lines += report["directory"]
    if report["failing_users"]:
        lines.append("Users whose last reconcile failed")
        lines += [f"  {line}" for line in report["failing_users"]]
    lines.append(
        f"Workers alive: {report['workers_alive']}; scheduler lease: {report['scheduler_lease'] or 'none'}"
    )
    if report["problems"]:
        lines.append("UNHEALTHY")
        lines += [f"  - {problem}" for problem in report["problems"]]
    else:
        lines.append("HEALTHY")
    return "\n".join(lines)


def healthy(report: dict[str, Any]) -> bool:
    """False when something needs an operator; ``report["problems"]`` says what."""
    return not report["problems"]
