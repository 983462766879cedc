"""Environments for ``presence-bridge`` subprocesses: bare, with the web role's settings, with Redis."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.core.embedded import free_port
from tests.cli.processes import clean_env
from tests.conftest import CLIENT_ID, SECRET_KEY, TENANT_ID


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def bare_env(data_dir: Path) -> dict[str, str]:
    """No bridge setting but DATA_DIR (inside tmp_path, never the developer's ./data)."""
    return clean_env(DATA_DIR=data_dir)


@pytest.fixture
def core_env(bare_env: dict[str, str]) -> dict[str, str]:
    """The settings the web role needs; identity endpoints point at a closed local port (offline)."""
    offline = f"https://127.0.0.1:{free_port()}"
    return {
        **bare_env,
        "PUBLIC_BASE_URL": "https://bridge.test",
        "BRIDGE_SECRET_KEY": SECRET_KEY,
        "AZURE_TENANT_ID": TENANT_ID,
        "AZURE_CLIENT_ID": CLIENT_ID,
        "AUTHORITY_BASE_URL": offline,
        "OPENID_METADATA_URL": f"{offline}/common/v2.0/.well-known/openid-configuration",
        "GRAPH_BASE_URL": offline,
    }


@pytest.fixture
def redis_env(core_env: dict[str, str], redis_url: str) -> dict[str, str]:
    return {**core_env, "REDIS_URL": redis_url}
