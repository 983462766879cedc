"""Benchmark of the subscription scheduler (run by hand; pytest does not collect it).

    .venv/bin/python tests/benchmarks/bench_subscriptions.py [--users 10000] [--lookup]

Against a Graph sandbox limited to 1,500 presence requests per 30 s (Graph's documented rate) and
an embedded Valkey, it measures: signing in the service accounts, creating every subscription
(each creation includes Graph's validation handshake with the receiver), a full resync sweep, the
same sweep under a ten times stricter limit (429 + Retry-After on the sandbox's clock), and the
Redis memory the subscription state needs per 1,000 users.  ``--lookup`` also times resolving all
e-mails through ``$batch``; without it the ids are seeded, because the sandbox's user search scans
every user for every request and would dominate the run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import redis.asyncio as aioredis  # noqa: E402

from service.core import keys  # noqa: E402
from service.core.embedded import EmbeddedValkey  # noqa: E402
from service.core.settings import Settings  # noqa: E402
from service.sandbox.graph import GraphSandbox  # noqa: E402
from service.sandbox.graph_host import SandboxOptions  # noqa: E402
from service.web.server import ServerThread  # noqa: E402
from subscriptions.scheduler import build_scheduler  # noqa: E402
from subscriptions.shards import CAPACITY, accounts_needed, assign  # noqa: E402
from tests.fixtures.graph_sandbox import GraphReceiver, GraphSandboxHandle  # noqa: E402
from tests.fixtures.subscription_world import SERVICE_PASSWORD, service_account_names  # noqa: E402

SUBSCRIPTION_KEYS = (
    keys.USER_IDS,
    keys.SHARDS,
    keys.SUBSCRIPTION_STATE,
    keys.TOKEN_CACHES,
    keys.ACCOUNT_STATUS,
)


def _print(label: str, value: str) -> None:
    print(f"{label:<58} {value}")


async def _memory(redis: aioredis.Redis) -> dict[str, int]:
    usage = {}
    for key in SUBSCRIPTION_KEYS:
        usage[key] = int(await redis.memory_usage(key, samples=0) or 0)
    return usage


async def run(args: argparse.Namespace, workdir: Path) -> None:
    valkey = EmbeddedValkey(workdir / "valkey", appendonly=False)
    valkey.start()
    sandbox = GraphSandbox(SandboxOptions(coalesce_seconds=0.2), state_dir=workdir / "sandbox")
    server = sandbox.serve_in_thread()
    handle = GraphSandboxHandle(sandbox, server, sandbox.options.control_token)
    receiver = GraphReceiver()
    issued = sandbox.ca.issue(["127.0.0.1", "localhost"])
    cert_file, key_file = issued.write(workdir / "receiver", "server")
    receiver.server = ServerThread(
        receiver.app, host="127.0.0.1", port=0, cert_file=cert_file, key_file=key_file
    )
    receiver.server.start()
    redis = aioredis.Redis.from_url(valkey.url)
    try:
        count = accounts_needed(args.users)
        names = service_account_names(count)
        for name in names:
            handle.add_service_account(name, SERVICE_PASSWORD)
        emails: dict[str, str] = {}
        for index in range(args.users):
            email = f"user{index:05d}@example.test"
            emails[email] = sandbox.add_user(f"User {index:05d}", mail=email).id
        settings = Settings.from_env(
            {
                "REDIS_URL": valkey.url,
                "PUBLIC_BASE_URL": receiver.server.base_url,
                "BRIDGE_SECRET_KEY": "benchmark-secret-key-0123456789abcdefghij",
                "AZURE_TENANT_ID": handle.tenant_id,
                "AZURE_CLIENT_ID": handle.client_id,
                "AZURE_CLIENT_SECRET": handle.client_secret,
                "GRAPH_BASE_URL": handle.base_url,
                "AUTHORITY_BASE_URL": handle.base_url,
                "EXTRA_CA_FILE": handle.ca_file,
                "GRAPH_SERVICE_ACCOUNTS": ",".join(names),
            },
            env_file=None,
        )

        async def source() -> list[str]:
            return list(emails)

        scheduler = build_scheduler(settings, redis, source, clock=sandbox.clock)
        info_before = int((await redis.info("memory"))["used_memory"])
        _print("users / service accounts", f"{args.users} / {count} ({CAPACITY} users each)")

        start = time.perf_counter()
        tokens = scheduler.renewal.tokens
        await asyncio.gather(*(tokens.login_with_password(n, SERVICE_PASSWORD) for n in names))
        _print("sign in all service accounts (ROPC, parallel)", f"{time.perf_counter() - start:.2f} s")

        if args.lookup:
            start = time.perf_counter()
            resolution = await scheduler.users.resolve(list(emails))
            _print("resolve e-mails via $batch (cold cache)", f"{time.perf_counter() - start:.2f} s")
            assert len(resolution.ids) == args.users
        else:
            now = sandbox.clock.now()
            await redis.hset(
                keys.USER_IDS,
                mapping={e: json.dumps({"id": i, "checked_at": now}) for e, i in emails.items()},
            )
        start = time.perf_counter()
        resolution = await scheduler.users.resolve(list(emails))
        _print("resolve e-mails (warm cache)", f"{time.perf_counter() - start:.3f} s")

        assignment = assign({}, resolution.user_ids, names)
        await scheduler.shards.save(assignment, {})
        now = sandbox.clock.now()
        start = time.perf_counter()
        for name in names:
            await scheduler.renewal.ensure(name, assignment[name.lower()], now)
        created = time.perf_counter() - start
        _print("create all subscriptions (sequential, with handshakes)", f"{created:.2f} s")
        assert len([s for s in sandbox.subscriptions.active()]) == count

        everyone = sorted(resolution.user_ids)
        start = time.perf_counter()
        queued = await scheduler.resync.sweep(everyone)
        _print(
            "full resync, limit 1500 req / 30 s", f"{time.perf_counter() - start:.2f} s ({queued} presences)"
        )

        sandbox.limiter.configure(max(1, count // 10), 30)
        sandbox.clock.set_speed(30)
        start_virtual, start = sandbox.clock.now(), time.perf_counter()
        queued = await scheduler.resync.sweep(everyone)
        real, virtual = time.perf_counter() - start, sandbox.clock.now() - start_virtual
        _print(
            f"full resync, limit {max(1, count // 10)} req / 30 s (clock x30)",
            f"{real:.2f} s real, {virtual:.0f} s Graph time",
        )
        sandbox.clock.set_speed(1)
        sandbox.limiter.configure(1500, 30)

        start = time.perf_counter()
        report = await scheduler.run_once(sandbox.clock.now())
        _print(
            "steady-state pass (nothing to change)", f"{time.perf_counter() - start:.2f} s, ok={report.ok}"
        )

        usage = await _memory(redis)
        total = sum(usage.values())
        for key, size in usage.items():
            _print(f"  MEMORY USAGE {key.split(':')[-1]}", f"{size / 1024:.1f} KiB")
        _print(
            "subscription state per 1,000 users (MEMORY USAGE)", f"{total / args.users * 1000 / 1024:.1f} KiB"
        )
        stream = int(await redis.memory_usage(keys.presence_stream(0), samples=0) or 0)
        _print(
            "presence stream per 1,000 queued resync entries",
            f"{stream / (2 * args.users) * 1000 / 1024:.1f} KiB",
        )
        info_after = int((await redis.info("memory"))["used_memory"])
        _print(
            "INFO used_memory growth per 1,000 users (incl. stream)",
            f"{(info_after - info_before) / args.users * 1000 / 1024:.1f} KiB",
        )
        await scheduler.close()
    finally:
        await redis.aclose()
        receiver.server.stop()
        handle.close()
        valkey.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--lookup", action="store_true", help="also time e-mail lookups through the sandbox")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        asyncio.run(run(args, Path(workdir)))


if __name__ == "__main__":
    main()
