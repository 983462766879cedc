"""Ingest benchmark: encrypted notifications through POST /graph/notifications, and the worker.

Run by hand:  python tests/benchmarks/bench_ingest.py [--seconds 10] [--overload]

The web tier runs as a real `presence-bridge serve --role web` subprocess pinned to one core; the
load generator is another process pinned to the other core; Valkey is the embedded binary.  It
prints:
  * a bare loop of RSA-OAEP-SHA1 decryptions with the same key (the floor: one per item),
  * notifications/s with batches of 1 and of 50 (closed loop), and the ratio to the floor,
  * ack latency p50/p99 at a fixed 1,000 notifications/s (open loop, no coordinated omission),
  * worker changes/s from the stream into observed state.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from service.bridge.streams import append_presence_batch  # noqa: E402
from service.bridge.worker import PresenceWorker  # noqa: E402
from service.core import keys  # noqa: E402
from service.core.embedded import EmbeddedValkey, free_port  # noqa: E402
from service.core.partitions import Partitions  # noqa: E402
from service.core.secretbox import SecretBox  # noqa: E402
from service.core.settings import Settings  # noqa: E402
from service.core.storage import connect_worker  # noqa: E402
from service.graph.certificates import CertificateStore  # noqa: E402
from service.graph.clientstate import ClientStates  # noqa: E402
from service.graph.crypto import encrypt_content  # noqa: E402
from service.graph.presence import PresenceChange  # noqa: E402
from service.sandbox.tls import CertificateAuthority  # noqa: E402
from tests.conftest import CLIENT_ID, SECRET_KEY, TENANT_ID  # noqa: E402
from tests.fixtures.webhook import GraphSigner, NotificationFactory, Subscription  # noqa: E402

CORES = sorted(os.sched_getaffinity(0))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bare_decrypt_rate(private_key: Any, wrapped: list[bytes], seconds: float) -> float:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)  # noqa: S303
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        private_key.decrypt(wrapped[done % len(wrapped)], oaep)
        done += 1
    return done / (time.perf_counter() - started)


# -- load generator (runs in its own process) ---------------------------------------------------


async def _closed_loop(url: str, bodies: list[bytes], seconds: float, concurrency: int) -> dict[str, float]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    deadline = time.perf_counter() + seconds
    counter = 0

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal counter
        while time.perf_counter() < deadline:
            body = bodies[counter % len(bodies)]
            counter += 1
            started = time.perf_counter()
            async with session.post(url, data=body, headers={"content-type": "application/json"}) as resp:
                await resp.read()
                statuses[resp.status] = statuses.get(resp.status, 0) + 1
            latencies.append(time.perf_counter() - started)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(one(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {
        "requests": len(latencies),
        "elapsed": elapsed,
        "p50": pct(latencies, 0.5),
        "p99": pct(latencies, 0.99),
        "non_202": sum(v for k, v in statuses.items() if k != 202),
    }


async def _open_loop(url: str, bodies: list[bytes], seconds: float, rate: float) -> dict[str, float]:
    latencies: list[float] = []
    accepted: list[float] = []
    statuses: dict[int, int] = {}
    connector = aiohttp.TCPConnector(limit=2048)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(index: int, scheduled: float) -> None:
            async with session.post(
                url, data=bodies[index % len(bodies)], headers={"content-type": "application/json"}
            ) as resp:
                await resp.read()
                statuses[resp.status] = statuses.get(resp.status, 0) + 1
            # From the moment it should have been sent: a slow server cannot hide its backlog.
            latencies.append(time.perf_counter() - scheduled)
            if resp.status == 202:
                accepted.append(latencies[-1])

        start = time.perf_counter()
        total = int(seconds * rate)
        tasks = []
        for i in range(total):
            scheduled = start + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, scheduled)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    return {
        "requests": len(latencies),
        "elapsed": elapsed,
        "p50": pct(latencies, 0.5),
        "p99": pct(latencies, 0.99),
        "max": max(latencies),
        "non_202": sum(v for k, v in statuses.items() if k != 202),
        "shed": statuses.get(503, 0),
        "accepted": len(accepted),
        "accepted_p99": pct(accepted, 0.99) if accepted else 0.0,
    }


def _generator(mode: str, url: str, bodies_file: str, seconds: float, arg: float, out: Any) -> None:
    os.sched_setaffinity(0, {CORES[-1]})
    bodies = [b.encode() for b in json.loads(Path(bodies_file).read_text())]
    if mode == "closed":
        out.put(asyncio.run(_closed_loop(url, bodies, seconds, int(arg))))
    else:
        out.put(asyncio.run(_open_loop(url, bodies, seconds, arg)))


def run_generator(mode: str, url: str, bodies_file: Path, seconds: float, arg: float) -> dict[str, float]:
    ctx = multiprocessing.get_context("spawn")
    queue: Any = ctx.Queue()
    proc = ctx.Process(target=_generator, args=(mode, url, str(bodies_file), seconds, arg, queue))
    proc.start()
    result: dict[str, float] = queue.get(timeout=seconds * 4 + 120)
    proc.join()
    return result


# -- orchestration ------------------------------------------------------------------------------


async def main(seconds: float, overload: bool) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="pb-bench-"))
    valkey = EmbeddedValkey(workdir / "valkey", appendonly=True)
    valkey.start()
    signer = GraphSigner()
    ca = CertificateAuthority()
    ca_file = ca.write_ca(workdir / "ca.pem")
    jwks_port = free_port()
    app = web.Application()
    base = f"https://127.0.0.1:{jwks_port}"

    async def metadata(_: web.Request) -> web.Response:
        return web.json_response({"jwks_uri": f"{base}/keys"})

    async def keyset(_: web.Request) -> web.Response:
        return web.json_response(signer.jwks())

    app.router.add_get("/meta", metadata)
    app.router.add_get("/keys", keyset)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(
        runner, "127.0.0.1", jwks_port, ssl_context=ca.issue(["127.0.0.1"]).server_context(workdir / "tls")
    ).start()

    redis = connect_worker(valkey.url)
    box = SecretBox(SECRET_KEY)
    certificate = await CertificateStore(redis, box).current()
    subscription = Subscription("bench-subscription", "bench-client-state-" + "x" * 24)
    await ClientStates(redis, box).set(subscription.id, subscription.client_state)
    factory = NotificationFactory(signer)
    token = signer.token()

    def bodies(batch: int, count: int) -> Path:
        path = workdir / f"bodies-{batch}.json"
        docs = []
        for b in range(count):
            items = [factory.item(subscription, certificate, f"user-{b * batch + i}") for i in range(batch)]
            docs.append(json.dumps(factory.body(items, tokens=[token])))
        path.write_text(json.dumps(docs))
        return path

    print(f"cores available: {CORES}; web tier pinned to core {CORES[0]}, load generator to core {CORES[-1]}")
    wrapped = [
        json.loads(json.dumps(encrypt_content(b"x", certificate.certificate, certificate.id)))
        for _ in range(64)
    ]
    import base64

    floor = bare_decrypt_rate(certificate.private_key, [base64.b64decode(w["dataKey"]) for w in wrapped], 3.0)
    print(f"bare RSA-OAEP-SHA1 decryptions (2048-bit), one core: {floor:,.0f}/s")

    port = free_port()
    env = dict(
        os.environ,
        REDIS_URL=valkey.url,
        PUBLIC_BASE_URL="https://bench.invalid",
        BRIDGE_SECRET_KEY=SECRET_KEY,
        AZURE_TENANT_ID=TENANT_ID,
        AZURE_CLIENT_ID=CLIENT_ID,
        OPENID_METADATA_URL=f"{base}/meta",
        EXTRA_CA_FILE=str(ca_file),
        LOG_LEVEL="WARNING",
        PRESENCE_STREAM_MAXLEN="10000000",
    )
    web_proc = subprocess.Popen(
        [
            "taskset",
            "-c",
            str(CORES[0]),
            sys.executable,
            "-m",
            "service",
            "serve",
            "--role",
            "web",
            "--port",
            str(port),
        ],
        env=env,
        cwd=workdir,
    )
    url = f"http://127.0.0.1:{port}/graph/notifications"
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(300):
                try:
                    async with session.get(f"http://127.0.0.1:{port}/readyz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
            else:
                raise SystemExit("web tier did not become ready")

        rows = []
        for batch, concurrency in ((1, 32), (50, 8)):
            path = bodies(batch, 400 if batch == 1 else 40)
            result = run_generator("closed", url, path, seconds, concurrency)
            rate = result["requests"] * batch / result["elapsed"]
            rows.append((batch, rate, result))
            print(
                f"ingest, batch {batch:>2}: {rate:,.0f} notifications/s on one core "
                f"= {rate / floor:.2f} x the bare decryption loop; "
                f"request p50 {result['p50'] * 1000:.1f} ms, p99 {result['p99'] * 1000:.1f} ms; "
                f"non-202: {result['non_202']}"
            )

        if overload:
            # Capacity with batches of 10, then offered loads far beyond it (open loop).
            path = bodies(10, 400)
            capacity = run_generator("closed", url, path, seconds, 16)
            capacity_rps = capacity["requests"] / capacity["elapsed"]
            print(f"capacity, batches of 10: {capacity_rps:,.0f} requests/s on one core")
            for factor in (1.0, 2.0, 5.0):
                result = run_generator("open", url, path, seconds, capacity_rps * factor)
                goodput = result["accepted"] / result["elapsed"]
                print(
                    f"offered {factor:.0f}x ({capacity_rps * factor:,.0f}/s): goodput {goodput:,.0f}/s "
                    f"= {goodput / capacity_rps:.2f} x capacity; shed (503) {result['shed']:,} of "
                    f"{result['requests']:,}; accepted p99 {result['accepted_p99'] * 1000:.0f} ms"
                )
        for batch in (1, 10):
            path = bodies(batch, 400)
            result = run_generator("open", url, path, seconds, 1000 / batch)
            print(
                f"ack latency at 1,000 notifications/s (batches of {batch}, {1000 // batch} requests/s): "
                f"p50 {result['p50'] * 1000:.1f} ms, p99 {result['p99'] * 1000:.1f} ms, "
                f"max {result['max'] * 1000:.1f} ms; non-202: {result['non_202']}"
            )
    finally:
        web_proc.terminate()
        web_proc.wait()

    total = 50_000
    changes = [
        PresenceChange(f"user-{i % 5000}", "Busy", "InACall", sequence=f"{i:020d}", received_at=float(i))
        for i in range(total)
    ]
    os.sched_setaffinity(0, {CORES[0]})
    for count in (1, 4):
        # Partitions are drained side by side: one partition's Python work overlaps another's Redis.
        partitions = Partitions(count)
        await redis.delete(
            *partitions.presence_streams(), *(keys.observed_presence(c.user_id) for c in changes[:5000])
        )
        for chunk in range(0, total, 1000):
            await append_presence_batch(redis, partitions, changes[chunk : chunk + 1000], 10_000_000)
        settings = Settings.from_env(
            {
                "REDIS_URL": valkey.url,
                "PUBLIC_BASE_URL": "https://bench.invalid",
                "BRIDGE_SECRET_KEY": SECRET_KEY,
                "AZURE_TENANT_ID": TENANT_ID,
                "AZURE_CLIENT_ID": CLIENT_ID,
                "WORKER_BATCH": "500",
                "REDIS_PARTITIONS": str(count),
            },
            env_file=None,
        )
        worker = PresenceWorker(redis, settings, partitions, block_ms=10)
        started = time.perf_counter()
        handled = await worker.drain()
        elapsed = time.perf_counter() - started
        print(
            f"worker, {count} partition(s): {handled:,} changes in {elapsed:.2f} s = "
            f"{handled / elapsed:,.0f} changes/s (one process, batches of 500; "
            f"outcomes {dict((k.name, v) for k, v in worker.outcomes.items())})"
        )
    await redis.aclose()
    await runner.cleanup()
    valkey.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each load phase")
    parser.add_argument(
        "--overload", action="store_true", help="also offer 1x, 2x and 5x capacity and print the goodput"
    )
    arguments = parser.parse_args()
    asyncio.run(main(arguments.seconds, arguments.overload))
