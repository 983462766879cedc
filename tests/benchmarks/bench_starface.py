"""STARFACE gateway benchmark (run by hand; not collected by pytest).

    .venv/bin/python -m tests.benchmarks.bench_starface [--events 5000] [--sessions 1000]

1. Callback ingestion: ``receiveCallState`` POSTs through the real HTTP endpoint (uvicorn on
   loopback) into a Redis stream, events/s.
2. UCI against the STARFACE sandbox with N sessions: first login pass, one keepAlive pass (the
   load every ``STARFACE_KEEPALIVE_SECONDS``), DND writes/s through the gateway.

Everything runs in one process on loopback (the sandbox in a thread of its own), so the numbers
are a floor for one replica on this machine, not a PBX's limit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis
from starlette.applications import Starlette

from service.core import keys
from service.core.embedded import EmbeddedValkey
from service.core.secretbox import SecretBox
from service.core.settings import Settings
from service.sandbox.starface import SandboxOptions, SandboxThread
from service.starface import callback_tokens, xmlrpc
from service.starface.credentials import CredentialStore
from service.starface.rest import open_http
from service.starface.sessions import SessionManager
from service.web import starface_callback as callback
from service.web.server import AppServer
from tests.fixtures.starface_sandbox import StarfaceSandboxHandle

SECRET_KEY = "bench-secret-key-0123456789abcdefghijklmnop"


def settings_for(redis_url: str, **extra: str) -> Settings:
    env = {
        "REDIS_URL": redis_url,
        "PUBLIC_BASE_URL": "https://bridge.bench",
        "BRIDGE_SECRET_KEY": SECRET_KEY,
        "AZURE_TENANT_ID": "11111111-2222-3333-4444-555555555555",
        "AZURE_CLIENT_ID": "c",
        **extra,
    }
    return Settings.from_env(env, env_file=None)


@contextlib.asynccontextmanager
async def callback_server(redis_url: str, settings: Settings) -> AsyncIterator[str]:
    app = Starlette(routes=callback.routes())
    app.state.redis = aioredis.Redis.from_url(redis_url, max_connections=200)
    app.state.settings = settings
    server = AppServer(app, lifespan="off")
    await server.start()
    try:
        yield server.url
    finally:
        await server.stop()
        await app.state.redis.aclose()


async def bench_callbacks(redis_url: str, events: int, concurrency: int) -> None:
    settings = settings_for(redis_url)
    client = aioredis.Redis.from_url(redis_url)
    await client.delete(keys.call_stream(0))
    token = secrets.token_urlsafe(32)
    await callback_tokens.register_token(client, token, "0001")
    states = ["RINGING", "CONNECTED", "HANGUP"]
    bodies = [
        xmlrpc.dumps_call(
            "ucp.v30.events.call.receiveCallState",
            [{"id": f"call-{n // 3}", "state": states[n % 3], "timestamp": 1763800000000 + n}],
        )
        for n in range(events)
    ]
    async with callback_server(redis_url, settings) as base:
        url = f"{base}{callback_tokens.callback_path(token)}"
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as http:
            queue: asyncio.Queue[bytes] = asyncio.Queue()
            for body in bodies:
                queue.put_nowait(body)
            failures = 0

            async def worker() -> None:
                nonlocal failures
                while not queue.empty():
                    body = queue.get_nowait()
                    async with http.post(url, data=body, headers={"Content-Type": "text/xml"}) as response:
                        await response.read()
                        failures += response.status != 200

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            elapsed = time.perf_counter() - started
    stored = await client.xlen(keys.call_stream(0))
    await client.aclose()
    print(
        f"callbacks: {events} events, concurrency {concurrency}: {elapsed:.2f} s, "
        f"{events / elapsed:,.0f} events/s; stored {stored}, failed {failures}"
    )


async def bench_sessions(redis_url: str, sessions: int, state_dir: Path) -> None:
    thread = SandboxThread(SandboxOptions(state_dir=state_dir, session_timeout=3600.0))
    pbx = StarfaceSandboxHandle(thread.start())
    try:
        logins = [f"{n:05d}" for n in range(1, sessions + 1)]
        started = time.perf_counter()
        for login in logins:
            await asyncio.to_thread(pbx.add_user, login, f"pw-{login}")
        print(f"sessions: created {sessions} sandbox users in {time.perf_counter() - started:.1f} s")
        settings = settings_for(
            redis_url,
            STARFACE_BASE_URL=pbx.base_url,
            EXTRA_CA_FILE=str(pbx.ca_file),
            STARFACE_KEEPALIVE_SECONDS="30",
        )
        client = aioredis.Redis.from_url(redis_url, max_connections=200)
        for key in (keys.UCI_DUE, keys.UCI_SESSIONS, keys.UCI_CALLBACK_SECRETS, keys.UCI_CALLBACK_TOKENS):
            await client.delete(key)
        await CredentialStore(client, SecretBox(SECRET_KEY)).put_many({x: f"pw-{x}" for x in logins})
        async with open_http(settings.extra_ca_file, limit=100) as http:
            manager = SessionManager(
                client, settings, http, callback_base_url="http://127.0.0.1:9", concurrency=100, batch=500
            )
            now = time.time() + 10
            await manager.sync(logins, now=now)
            started = time.perf_counter()
            report = await manager.run_due(now)
            elapsed = time.perf_counter() - started
            rate = sessions / elapsed
            print(f"sessions: first pass {dict(report.outcomes)} in {elapsed:.2f} s ({rate:,.0f}/s)")
            started = time.perf_counter()
            report = await manager.run_due(now + 30)
            elapsed = time.perf_counter() - started
            print(
                f"sessions: keepAlive pass {dict(report.outcomes)} in {elapsed:.2f} s "
                f"({sessions / elapsed:,.0f} keepAlive/s; budget per 30 s period: {elapsed / 30:.1%})"
            )
            limit = asyncio.Semaphore(100)

            async def write(login: str, on: bool) -> None:
                async with limit:
                    await manager.set_dnd(login, on)

            started = time.perf_counter()
            await asyncio.gather(*(write(login, True) for login in logins))
            elapsed = time.perf_counter() - started
            print(f"sessions: {sessions} DND writes in {elapsed:.2f} s ({sessions / elapsed:,.0f} writes/s)")
            check = pbx.user(logins[-1])["dnd"]
            print(f"sessions: last user's DND on the PBX: {check}")
        await client.aclose()
    finally:
        pbx.close()
        thread.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--skip-sessions", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        valkey = EmbeddedValkey(Path(tmp) / "valkey", appendonly=False)
        valkey.start()
        try:
            await bench_callbacks(valkey.url, args.events, args.concurrency)
            if not args.skip_sessions:
                await bench_sessions(valkey.url, args.sessions, Path(tmp) / "sandbox")
        finally:
            valkey.stop()


if __name__ == "__main__":
    asyncio.run(main())
