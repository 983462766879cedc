"""Benchmark of poll mode and of finding a silent subscription (run by hand; pytest does not collect it).

    .venv/bin/python tests/benchmarks/bench_poll.py [--samples 40] [--detections 5]
        [--watch-seconds 10] [--grace-seconds 10] [--poll-seconds 2] [--rates 1000,10000]

Loopback only, everything started here and stopped at the end:

1. **Poll mode latency.**  The whole bridge in this process (``DemoWorld``: embedded Valkey, Graph
   and STARFACE sandboxes over TLS, all roles) with ``PRESENCE_SOURCE=poll``: a person's Teams
   presence flips between Available and Busy/InACall through the Graph sandbox, at a random moment
   within the poll interval, and the time until the STARFACE sandbox shows the DND change is taken.
2. **Missed-change detection.**  The same bridge with subscriptions: the subscription is silenced
   in the sandbox, the person's presence changes at a random moment within the watch interval,
   and the script times (a) STARFACE showing the new state and (b) the missed change counted in
   Redis; then a change the recreated subscription delivers ends the silence before the next
   sample.  Expected bounds: (a) <= WATCH_SECONDS plus a
   reconcile, (b) <= WATCH_SECONDS + MISSED_GRACE_SECONDS + POLL_SECONDS.
3. **Graph request rate.**  A Graph sandbox with 1,000 and 10,000 users and the poll-mode watch
   reading them every POLL_SECONDS for 30 s: getPresencesByUserId requests per 30 s (the sandbox
   counts them; Graph allows 1,500), and the time one round takes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import redis.asyncio as aioredis  # noqa: E402

from service.core import keys  # noqa: E402
from service.core.clock import SystemClock  # noqa: E402
from service.core.embedded import EmbeddedValkey  # noqa: E402
from service.core.partitions import Partitions  # noqa: E402
from service.core.settings import Settings  # noqa: E402
from service.core.tls import client_context  # noqa: E402
from service.graph.client import GraphClient, RateLimiter  # noqa: E402
from service.sandbox.demo import SERVICE_ACCOUNT, DemoWorld  # noqa: E402
from service.sandbox.graph import GraphSandbox  # noqa: E402
from service.sandbox.graph_host import SandboxOptions  # noqa: E402
from subscriptions.records import SubscriptionRecords  # noqa: E402
from subscriptions.resync import Resync  # noqa: E402
from subscriptions.tokens import Tokens  # noqa: E402
from subscriptions.watch import PresenceWatch  # noqa: E402


def _print(label: str, value: str) -> None:
    print(f"  {label:<58} {value}")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


async def _wait(check: Any, within: float, step: float = 0.02) -> float:
    """Poll ``check`` until true; the monotonic time it became true."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await check():
            return time.monotonic()
        await asyncio.sleep(step)
    raise TimeoutError(f"not within {within} s")


async def poll_latency(workdir: Path, args: argparse.Namespace) -> None:
    print(f"1. poll mode: Teams change -> STARFACE DND, POLL_SECONDS={args.poll_seconds:g}")
    world = DemoWorld(
        workdir / "poll",
        users=1,
        settings_overrides={
            "PRESENCE_SOURCE": "poll",
            "POLL_SECONDS": str(args.poll_seconds),
            "GRAPH_SERVICE_ACCOUNTS": "",
        },
    )
    await world.start()
    try:
        await world.ready()
        [anna] = world.people
        latencies = []
        busy = False
        for _ in range(args.samples):
            busy = not busy
            await asyncio.sleep(random.uniform(0, args.poll_seconds))
            started = time.monotonic()
            await world.set_teams(anna, *(("Busy", "InACall") if busy else ("Available", "Available")))

            async def applied(busy: bool = busy) -> bool:
                return (await world.starface_state(anna))[0] is busy

            latencies.append(await _wait(applied, args.poll_seconds + 10) - started)
        _print("samples", str(len(latencies)))
        _print(
            "latency p50 / p99 / max", " / ".join(f"{percentile(latencies, q):.2f} s" for q in (0.5, 0.99, 1))
        )
    finally:
        await world.close()


async def detection(workdir: Path, args: argparse.Namespace) -> None:
    print(
        f"2. silent subscription: WATCH_SECONDS={args.watch_seconds}, "
        f"MISSED_GRACE_SECONDS={args.grace_seconds}, POLL_SECONDS={args.poll_seconds:g}"
    )
    world = DemoWorld(
        workdir / "watch",
        users=1,
        settings_overrides={
            "WATCH_SECONDS": str(args.watch_seconds),
            "MISSED_GRACE_SECONDS": str(args.grace_seconds),
            "POLL_SECONDS": str(args.poll_seconds),
        },
    )
    await world.start()
    assert world.redis_url is not None
    redis = aioredis.Redis.from_url(world.redis_url, decode_responses=True)
    try:
        await world.ready()
        [anna] = world.people
        account = SERVICE_ACCOUNT.lower()
        applied_after, counted_after = [], []
        busy = False
        for sample in range(args.detections):
            listed = (await world.graph_control("GET", "/subscriptions"))["value"]
            [current] = [s for s in listed if s["active"]]
            await world.graph_control("POST", f"/subscriptions/{current['id']}/silence", {})
            await asyncio.sleep(random.uniform(0, args.watch_seconds))
            busy = not busy
            started = time.monotonic()
            await world.set_teams(anna, *(("Busy", "InACall") if busy else ("Available", "Available")))

            async def applied(busy: bool = busy) -> bool:
                return (await world.starface_state(anna))[0] is busy

            async def counted(sample: int = sample) -> bool:
                return int(await redis.hget(keys.MISSED_CHANGES, account) or 0) > sample

            bound = args.watch_seconds + args.grace_seconds + args.poll_seconds + 10
            applied_after.append(await _wait(applied, bound) - started)
            counted_after.append(await _wait(counted, bound) - started)

            async def recreated(old: str = current["id"]) -> bool:
                subs = (await world.graph_control("GET", "/subscriptions"))["value"]
                return [s["id"] for s in subs if s["active"]] not in ([], [old])

            await _wait(recreated, 20)
            # A change the new subscription delivers ends the silence, so that every sample starts
            # from a delivering subscription and is found by a watch read, not by polling.
            busy = not busy
            await world.set_teams(anna, *(("Busy", "InACall") if busy else ("Available", "Available")))

            async def recovered() -> bool:
                return not await redis.hgetall(keys.SILENT_SUBSCRIPTIONS)

            await _wait(recovered, 20)

            async def settled(busy: bool = busy) -> bool:
                return (await world.starface_state(anna))[0] is busy

            await _wait(settled, 10)
        _print("samples", str(len(counted_after)))
        _print(
            "STARFACE shows the change, p50 / max",
            f"{percentile(applied_after, 0.5):.1f} / {max(applied_after):.1f} s",
        )
        _print(
            "missed change counted, p50 / max",
            f"{percentile(counted_after, 0.5):.1f} / {max(counted_after):.1f} s",
        )
    finally:
        await redis.aclose()
        await world.close()


async def request_rate(workdir: Path, args: argparse.Namespace, users: int) -> None:
    print(f"3. poll mode Graph requests: {users} users, POLL_SECONDS={args.poll_seconds:g}, 30 s")
    valkey = EmbeddedValkey(workdir / f"valkey-{users}", appendonly=False)
    valkey.start()
    sandbox = GraphSandbox(SandboxOptions(), state_dir=workdir / f"graph-{users}")
    server = sandbox.serve_in_thread()
    redis = aioredis.Redis.from_url(valkey.url)
    graph = GraphClient(
        server.base_url,
        ssl_context=client_context(sandbox.ca_file),
        limiter=RateLimiter(1500, 30, SystemClock()),
    )
    try:
        ids = [sandbox.add_user(f"User {n:05d}", mail=f"user{n:05d}@example.test").id for n in range(users)]
        settings = Settings.from_env(
            {
                "REDIS_URL": valkey.url,
                "PUBLIC_BASE_URL": "https://bridge.invalid",
                "BRIDGE_SECRET_KEY": "benchmark-secret-key-0123456789abcdefghij",
                "AZURE_TENANT_ID": sandbox.options.tenant_id,
                "AZURE_CLIENT_ID": sandbox.options.client_id,
                "AZURE_CLIENT_SECRET": sandbox.options.client_secret,
                "GRAPH_BASE_URL": server.base_url,
                "AUTHORITY_BASE_URL": server.base_url,
                "EXTRA_CA_FILE": str(sandbox.ca_file),
                "PRESENCE_SOURCE": "poll",
                "POLL_SECONDS": str(args.poll_seconds),
            },
            env_file=None,
        )
        tokens = Tokens.from_settings(redis, settings)
        reads = Resync(redis, graph, tokens.app_token, partitions=Partitions(settings.redis_partitions))
        watch = PresenceWatch(
            redis, reads, SubscriptionRecords(redis), poll_mode=True, poll_seconds=args.poll_seconds
        )
        await redis.set(keys.POLL_USERS, json.dumps(ids))
        await watch.tick()  # the first round queues everyone's first state
        requests, rounds, took = 0, [], time.monotonic()
        while time.monotonic() - took < 30:
            started = time.monotonic()
            done = await watch.tick()
            rounds.append(time.monotonic() - started)
            requests += done.requests
            await asyncio.sleep(max(0.0, done.interval - rounds[-1]))
        elapsed = time.monotonic() - took
        _print("rounds / requests a round", f"{len(rounds)} / {requests // max(1, len(rounds))}")
        _print("getPresencesByUserId requests per 30 s (Graph: 1,500)", f"{requests * 30 / elapsed:.0f}")
        _print("round time p50 / max", f"{percentile(rounds, 0.5) * 1000:.0f} / {max(rounds) * 1000:.0f} ms")
    finally:
        await graph.close()
        await redis.aclose()
        server.stop()
        valkey.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--detections", type=int, default=5)
    parser.add_argument("--watch-seconds", type=int, default=10)
    parser.add_argument("--grace-seconds", type=int, default=10)
    parser.add_argument("--poll-seconds", type=float, default=2.0)
    parser.add_argument("--rates", default="1000,10000", help="user counts for the request-rate part")
    parser.add_argument("--only", choices=("latency", "detection", "rate"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-poll-") as tmp:
        workdir = Path(tmp)
        if args.only in (None, "latency"):
            await poll_latency(workdir, args)
        if args.only in (None, "detection"):
            await detection(workdir, args)
        if args.only in (None, "rate"):
            for users in (int(n) for n in args.rates.split(",")):
                await request_rate(workdir, args, users)


if __name__ == "__main__":
    asyncio.run(main())
