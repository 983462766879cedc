"""Many scheduler replicas as real processes: killing the leader hands the lease over within its TTL."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from service.core import keys
from service.core.settings import Settings, reveal
from subscriptions.records import SubscriptionRecords
from tests.fixtures.subscription_world import World, WorldFactory

LEASE_SECONDS = 2
ROOT = Path(__file__).resolve().parents[2]


def _env(settings: Settings, redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "SYSTEMROOT")}
    env.update(
        {
            "REDIS_URL": redis_url,
            "PUBLIC_BASE_URL": settings.public_base_url,
            "BRIDGE_SECRET_KEY": settings.secret_key.get_secret_value(),
            "AZURE_TENANT_ID": settings.tenant_id,
            "AZURE_CLIENT_ID": settings.client_id,
            "AZURE_CLIENT_SECRET": reveal(settings.client_secret) or "",
            "GRAPH_BASE_URL": settings.graph_base_url,
            "AUTHORITY_BASE_URL": settings.authority_base_url,
            "EXTRA_CA_FILE": settings.extra_ca_file or "",
            "GRAPH_SERVICE_ACCOUNTS": ",".join(settings.graph_service_accounts),
            "SCHEDULER_LEASE_SECONDS": str(LEASE_SECONDS),
            "PYTHONPATH": str(ROOT),
        }
    )
    return env


def _start(world: World, emails_file: Path, redis_url: str, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "service",
            "subscriptions",
            "--emails-file",
            str(emails_file),
            "--pass-seconds",
            "0.3",
        ],
        cwd=ROOT,
        env=_env(world.settings, redis_url),
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


async def _holder_pid(world: World) -> int | None:
    raw = await world.redis.get(keys.SCHEDULER_LEASE)
    if raw is None:
        return None
    text = raw.decode() if isinstance(raw, bytes) else raw
    return int(text.split(":")[1])


@pytest.mark.slow
async def test_killed_leader_is_replaced_within_the_lease_ttl(
    subscription_world: WorldFactory, redis_url: str, tmp_path: Path
) -> None:
    world = await subscription_world(users=12, accounts=1)
    emails_file = tmp_path / "emails.txt"
    emails_file.write_text("\n".join(world.emails) + "\n")
    first = _start(world, emails_file, redis_url, tmp_path / "a.log")
    processes = [first]
    try:
        deadline = time.monotonic() + 20
        while not world.sandbox_subscriptions() or await _holder_pid(world) != first.pid:
            assert time.monotonic() < deadline, (tmp_path / "a.log").read_text()[-2000:]
            await asyncio.sleep(0.1)
        second = _start(world, emails_file, redis_url, tmp_path / "b.log")
        processes.append(second)
        await asyncio.sleep(1.0)  # the second replica is up and contending
        assert await _holder_pid(world) == first.pid
        [original] = world.sandbox_subscriptions()

        first.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        first.wait(timeout=10)
        while await _holder_pid(world) != second.pid:
            assert time.monotonic() - killed_at < LEASE_SECONDS + 2, (tmp_path / "b.log").read_text()[-2000:]
            await asyncio.sleep(0.05)
        assert time.monotonic() - killed_at <= LEASE_SECONDS + LEASE_SECONDS / 3 + 0.5

        # The new leader keeps the subscription alive: an expired one is recreated by it.  Its
        # periodic existence check is due every few minutes; mark it due now instead of waiting.
        world.handle.control("POST", f"/subscriptions/{original['id']}/expire")
        record = await SubscriptionRecords(world.redis).get(world.accounts[0])
        assert record is not None
        record.verified_at = 0.0
        await SubscriptionRecords(world.redis).put(record)
        deadline = time.monotonic() + 15
        while True:
            current = world.sandbox_subscriptions()
            if current and current[0]["id"] != original["id"]:
                break
            assert time.monotonic() < deadline, (tmp_path / "b.log").read_text()[-2000:]
            await asyncio.sleep(0.1)
        assert sorted(current[0]["userIds"]) == sorted(world.user_ids.values())

        # A graceful stop hands the lease back at once.
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=10) == 0
        assert await _holder_pid(world) is None
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
