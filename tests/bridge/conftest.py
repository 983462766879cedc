"""Fixtures of the bridge tests: mapping files and a fake clock."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from service.bridge.mapping import Mapping, default_mapping
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
