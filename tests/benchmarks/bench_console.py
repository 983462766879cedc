"""Console benchmark: the users page with 10,000 bridged users, over real HTTP, on the embedded Valkey.

Run by hand:  python tests/benchmarks/bench_console.py [--users 10000] [--rounds 20]

Fills Redis as a running bridge would (directory, identity links, observed presence, bridge
records, one decision per user, credentials for nine in ten), serves the console with uvicorn on
loopback and times, per request, the first users page (50 rows), a state filter over every user
("DND on"), a search, the live table body the page polls every second, and one user's page.
Prints p50/p95/max per page and the console process's RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from service.console.app import create_console_app  # noqa: E402
from service.console.sessions import COOKIE, LOCAL, CookieSigner, SessionStore  # noqa: E402
from service.core import keys  # noqa: E402
from service.core.embedded import EmbeddedValkey, free_port  # noqa: E402
from service.core.passwords import hash_password  # noqa: E402
from service.core.settings import Settings  # noqa: E402
from service.core.storage import connect_worker  # noqa: E402
from service.web.server import AppServer  # noqa: E402

SECRET = "bench-secret-key-0123456789abcdefghijkl"


async def fill(redis_url: str, users: int) -> None:
    redis = connect_worker(redis_url)
    now = time.time()
    async with redis.pipeline(transaction=False) as pipe:
        for n in range(users):
            login = f"{n:05d}"
            user_id = f"00000000-0000-4000-8000-{n:012d}"
            entry = {
                "id": n,
                "login": login,
                "email": f"user{n}@bench.example",
                "first_name": f"User{n}",
                "family_name": "Bench",
                "groups": [],
            }
            pipe.hset(keys.STARFACE_DIRECTORY, login, json.dumps(entry, sort_keys=True))
            pipe.hset(keys.IDENTITY_USER_BY_LOGIN, login, user_id)
            pipe.hset(keys.IDENTITY_LOGIN_BY_USER, user_id, login)
            busy = n % 7 == 0
            pipe.hset(
                keys.observed_presence(user_id),
                mapping={
                    "availability": "Busy" if busy else "Available",
                    "activity": "InACall" if busy else "Available",
                    "received_at": repr(now),
                    "source": "notification",
                },
            )
            pipe.hset(
                keys.user_bridge(user_id),
                mapping={
                    "applied_dnd": "1" if busy else "0",
                    "applied_text": "Im Gespräch" if busy else "Verfügbar",
                },
            )
            record = {
                "at": now,
                "user_id": user_id,
                "login": login,
                "trigger": "presence",
                "inputs": {},
                "rule": "row Available",
                "actions": [],
                "results": [],
                "latency_ms": 12.0,
            }
            pipe.lpush(keys.user_decisions(user_id), json.dumps(record))
            if n % 10:
                pipe.hset(keys.STARFACE_CREDENTIALS, login, "sealed")
            if n % 1000 == 999:
                await pipe.execute()
        await pipe.execute()
    # As a directory refresh leaves it: the digest says which selection is stored.
    await redis.hset(keys.STARFACE_DIRECTORY_META, mapping={"digest": "bench", "version": "1"})
    await redis.aclose()


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    p50 = statistics.median(ordered)
    return f"p50 {p50 * 1000:7.1f} ms  p95 {p95 * 1000:7.1f} ms  max {ordered[-1] * 1000:7.1f} ms"


async def main(users: int, rounds: int, profile: bool = False) -> None:
    with tempfile.TemporaryDirectory() as state:
        valkey = EmbeddedValkey(Path(state) / "valkey")
        valkey.start()
        try:
            await fill(valkey.url, users)
            port = free_port()
            settings = Settings.from_env(
                {
                    "PUBLIC_BASE_URL": "https://bridge.example",
                    "BRIDGE_SECRET_KEY": SECRET,
                    "AZURE_TENANT_ID": "11111111-2222-3333-4444-555555555555",
                    "AZURE_CLIENT_ID": "bench",
                    "CONSOLE_PORT": str(port),
                    "CONSOLE_ADMIN_USER": "bench",
                    "CONSOLE_ADMIN_PASSWORD_HASH": hash_password("bench-password-123"),
                },
                env_file=None,
            )
            server = AppServer(create_console_app(settings, valkey.url), port=port)
            task = asyncio.create_task(server.serve())
            redis = connect_worker(valkey.url)
            cookie, _ = await SessionStore(redis, CookieSigner(SECRET), 3600).create(
                who="bench", name="bench", method=LOCAL, admin=True
            )
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}", cookies={COOKIE: cookie}
            ) as client:
                for _ in range(50):
                    try:
                        await client.get("/login")
                        break
                    except httpx.TransportError:
                        await asyncio.sleep(0.1)
                pages = {
                    "users page 1 (50 rows)": "/users",
                    "users, filter DND on (all rows read)": "/users?show=dnd-on",
                    "users, search 'User42'": "/users?q=User42",
                    "live table body (polled each second)": "/users/rows",
                    "one user's page": "/users/04242",
                }
                print(f"{users:,} users, {rounds} rounds each")
                if profile:
                    import cProfile
                    import pstats

                    profiler = cProfile.Profile()
                    profiler.enable()
                    for _ in range(5):
                        await client.get("/users")
                    profiler.disable()
                    pstats.Stats(profiler).sort_stats("cumulative").print_callers("resp3.py:192")
                for name, path in pages.items():
                    samples = []
                    for _ in range(rounds):
                        started = time.perf_counter()
                        answer = await client.get(path)
                        samples.append(time.perf_counter() - started)
                        assert answer.status_code == 200, (path, answer.status_code)
                    print(f"  {name:<40} {percentiles(samples)}")
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"  max RSS of this process (console + client) {rss:.0f} MB")
            server.request_stop()
            await task
            await redis.aclose()
        finally:
            valkey.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--profile", action="store_true", help="print a cProfile of five users pages first")
    options = parser.parse_args()
    asyncio.run(main(options.users, options.rounds, options.profile))
