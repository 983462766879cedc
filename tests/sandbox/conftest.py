"""Fixtures of the sandbox tests: a raw client of the STARFACE sandbox the module's ``pbx`` serves."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fixtures.starface_sandbox import RawStarfaceClient, StarfaceSandboxHandle


@pytest.fixture
def client(pbx: StarfaceSandboxHandle) -> Iterator[RawStarfaceClient]:
    raw = RawStarfaceClient(pbx)
    yield raw
    raw.close()
