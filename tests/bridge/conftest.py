"""Fixtures of the bridge tests: mapping files, a fake clock, and the store (one server or a cluster)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from service.bridge.mapping import Mapping, default_mapping
from service.core.storage import connect_worker
from service.sandbox.demo import DemoWorld
from tests.bridge.harness import FakeClock


@pytest.fixture
def write_mapping(tmp_path: Path) -> Callable[[str], Path]:
    """Write TOML text to a fresh file and return its path."""
    counter = iter(range(1_000_000))

    def write(text: str) -> Path:
        path = tmp_path / f"mapping-{next(counter)}.toml"
        path.write_text(text, encoding="utf-8")
        return path

    return write


@pytest.fixture
def german() -> Mapping:
    return default_mapping("de")


@pytest.fixture
def english() -> Mapping:
    return default_mapping("en")


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(request: pytest.FixtureRequest, redis_url: str) -> tuple[str, dict[str, str]]:
    """The Redis the world runs on (one Valkey unless a test asks for both) and its settings."""
    if getattr(request, "param", "single") == "cluster":
        return request.getfixturevalue("cluster_url"), {"REDIS_PARTITIONS": "4"}
    return redis_url, {}


@pytest.fixture(params=["single", "cluster"])
async def either_client(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A worker's client on a single Valkey, then on a three-master cluster: the same code must
    pass on both."""
    url = redis_url if request.param == "single" else request.getfixturevalue("cluster_url")
    client = connect_worker(url)
    yield client
    await client.aclose()


@pytest.fixture
async def world_factory(
    tmp_path: Path, store: tuple[str, dict[str, str]]
) -> AsyncIterator[Callable[..., Any]]:
    worlds: list[DemoWorld] = []
    url, overrides = store

    async def factory(**options: Any) -> DemoWorld:
        options["settings_overrides"] = {**overrides, **options.get("settings_overrides", {})}
        world = DemoWorld(tmp_path / f"world-{len(worlds)}", redis_url=url, **options)
        worlds.append(world)
        await world.start()
        await world.ready()
        return world

    yield factory
    for world in worlds:
        await world.close()
