"""``presence-bridge rotate certificate|secret-key`` through real subprocesses: nothing lost."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import redis.asyncio as aioredis

from service.core import keys
from service.core.secretbox import SecretBox
from service.graph.certificates import CertificateStore
from service.starface.credentials import CredentialStore
from tests.cli.processes import CliProcess, describe, run_cli
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


OLD_KEY = "earlier-key-" + "o" * 32


async def _sealed_under(redis: aioredis.Redis, box: SecretBox) -> int:
    values = await redis.hvals(keys.STARFACE_CREDENTIALS)
    return sum(box.is_current(v) for v in values if isinstance(v, bytes))


async def test_rotate_secret_key_killed_half_way_leaves_everything_readable_and_a_rerun_finishes(
    redis_env: dict[str, str], redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    # The deployment has moved to SECRET_KEY; the stored values are still under the old key.
    logins = {f"{i:05d}": f"pw-{i}" for i in range(20000)}
    await CredentialStore(redis_client, SecretBox(OLD_KEY)).put_many(logins)
    env = {**redis_env, "BRIDGE_SECRET_KEY_PREVIOUS": OLD_KEY}
    new = SecretBox(SECRET_KEY)

    with CliProcess(["rotate", "secret-key", "--batch-size", "5"], env, tmp_path) as rotation:
        deadline = time.monotonic() + 20
        while await _sealed_under(redis_client, new) == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        rotation.process.kill()
        rotation.process.wait()
    moved = await _sealed_under(redis_client, new)
    assert 0 < moved < len(logins), "the pass was not interrupted half way"
    both = CredentialStore(redis_client, SecretBox(SECRET_KEY, previous=[OLD_KEY]))
    for login in list(logins)[:: len(logins) // 50]:
        assert await both.get(login) == logins[login]

    result = run_cli(["rotate", "secret-key"], env, tmp_path)
    assert result.returncode == 0, describe(result)
    assert f"re-sealed {len(logins) - moved}, already current {moved}" in result.stdout
    assert "BRIDGE_SECRET_KEY_PREVIOUS may be removed" in result.stdout
    new_only = CredentialStore(redis_client, new)
    assert await new_only.get("19999") == "pw-19999"
    assert await _sealed_under(redis_client, new) == len(logins)


async def test_rotate_secret_key_dry_run_changes_nothing_and_an_unknown_key_fails_naming_the_value(
    redis_env: dict[str, str], redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    await CredentialStore(redis_client, SecretBox(OLD_KEY)).put("0001", "pw")
    dry = run_cli(["rotate", "secret-key", "--dry-run"], redis_env, tmp_path)
    # Without BRIDGE_SECRET_KEY_PREVIOUS the old value opens with no configured key.
    assert dry.returncode == 1, describe(dry)
    assert f"cannot open {keys.STARFACE_CREDENTIALS}/0001: add the key" in dry.stdout
    env = {**redis_env, "BRIDGE_SECRET_KEY_PREVIOUS": OLD_KEY}
    dry = run_cli(["rotate", "secret-key", "--dry-run"], env, tmp_path)
    assert dry.returncode == 0, describe(dry)
    assert "would re-seal 1, already current 0" in dry.stdout
    assert await _sealed_under(redis_client, SecretBox(SECRET_KEY)) == 0
    bad = run_cli(["rotate", "secret-key", "--batch-size", "0"], env, tmp_path)
    assert bad.returncode == 2, describe(bad)
    assert "must be above zero" in bad.stderr
    short = run_cli(["rotate", "secret-key"], {**env, "BRIDGE_SECRET_KEY_PREVIOUS": "short"}, tmp_path)
    assert short.returncode == 2, describe(short)
    assert "BRIDGE_SECRET_KEY_PREVIOUS must be" in short.stderr
    assert "short" not in short.stderr.replace("BRIDGE_SECRET_KEY_PREVIOUS", "")
