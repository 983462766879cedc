"""``presence-bridge rotate certificate`` through a real subprocess: a new current key, the old one kept."""

from __future__ import annotations

from pathlib import Path

import redis.asyncio as aioredis

from service.core.secretbox import SecretBox
from service.graph.certificates import CertificateStore
from tests.cli.processes import describe, run_cli
from tests.conftest import SECRET_KEY


async def test_rotate_certificate_makes_a_new_one_current_and_keeps_the_old(
    redis_env: dict[str, str], redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    store = CertificateStore(redis_client, SecretBox(SECRET_KEY))
    old = await store.current()
    result = run_cli(["rotate", "certificate"], redis_env, tmp_path)
    assert result.returncode == 0, describe(result)
    new_id = await store.current_id()
    assert new_id not in (None, old.id)
    assert result.stdout.splitlines()[0] == f"encryption certificate {new_id} is current (was {old.id})"
    assert f"kept for notifications in flight: {old.id}" in result.stdout
    # The old private key still opens what Graph encrypted for it before the change.
    assert await CertificateStore(redis_client, SecretBox(SECRET_KEY)).get(old.id) is not None


def test_rotate_without_the_secret_key_is_a_configuration_error(
    bare_env: dict[str, str], tmp_path: Path
) -> None:
    result = run_cli(["rotate", "certificate"], bare_env, tmp_path)
    assert result.returncode == 2, describe(result)
    assert "BRIDGE_SECRET_KEY" in result.stderr
    assert "Traceback" not in result.stderr
