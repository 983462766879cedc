"""Fixtures of the bridge tests: mapping files and a fake clock."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from service.bridge.mapping import Mapping, default_mapping
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
