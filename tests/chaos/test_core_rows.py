"""The core rows of the chaos table, short, in CI: nothing wrong at the end, converged in seconds."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.scenarios import starface_refuses, teams_burst, valkey_restart

pytestmark = pytest.mark.slow


async def test_valkey_killed_mid_burst_and_restarted_on_its_aof(tmp_path: Path) -> None:
    row = await teams_burst("valkey", valkey_restart, tmp_path, fault_seconds=2.0)
    assert (row.wrong, row.dead_letters) == (0, 0), row
    assert row.converged_seconds is not None
    assert row.converged_seconds < 15, row


async def test_starface_refusing_for_ten_seconds(tmp_path: Path) -> None:
    row = await teams_burst("refuse", starface_refuses, tmp_path, fault_seconds=10.0)
    assert (row.wrong, row.dead_letters) == (0, 0), row
    assert row.converged_seconds is not None
    assert row.converged_seconds < 10, row
