"""Shared fixtures: a real Valkey server per test session, flushed per test, and settings factories."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from service.core.embedded import EmbeddedValkey
from service.core.settings import Settings

pytest_plugins = [
    "tests.fixtures.webhook",
    "tests.fixtures.graph_sandbox",
    "tests.fixtures.starface_sandbox",
    "tests.fixtures.subscription_world",
    "tests.fixtures.cluster",
]

SECRET_KEY = "test-secret-key-0123456789abcdefghijklmnop"
TENANT_ID = "11111111-2222-3333-4444-555555555555"
CLIENT_ID = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"


@pytest.fixture(scope="session")
def valkey_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedValkey]:
    server = EmbeddedValkey(tmp_path_factory.mktemp("valkey"), appendonly=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(valkey_server: EmbeddedValkey) -> str:
    if valkey_server.process is None:  # a test stopped it; bring it back for the next one
        valkey_server.start()
    client = redis.Redis.from_url(valkey_server.url)
    client.flushall()
    client.close()
    return valkey_server.url


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def make_settings(redis_url: str, tmp_path: Path) -> Callable[..., Settings]:
    def factory(**overrides: Any) -> Settings:
        env = {
            "REDIS_URL": redis_url,
            "PUBLIC_BASE_URL": "https://bridge.test",
            "BRIDGE_SECRET_KEY": SECRET_KEY,
            "AZURE_TENANT_ID": TENANT_ID,
            "AZURE_CLIENT_ID": CLIENT_ID,
            "AZURE_CLIENT_SECRET": "client-secret",
            "DATA_DIR": str(tmp_path / "data"),
        }
        env.update({k: str(v) for k, v in overrides.items()})
        return Settings.from_env(env, env_file=None)

    return factory
