"""Re-sealing under a new BRIDGE_SECRET_KEY: every store reads its values afterwards with the new
key alone, and values written while the pass runs are never lost or rolled back."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from service.core import keys
from service.core.secretbox import SecretBox
from service.graph.certificates import CertificateStore
from service.graph.clientstate import ClientStates
from service.ops.reseal import reseal
from service.starface.credentials import CredentialStore
from subscriptions.accounts import ServiceAccounts

OLD, NEW = "old-key-" + "o" * 32, "new-key-" + "n" * 32


async def _fill_every_store(redis: aioredis.Redis, box: SecretBox) -> str:
    await CredentialStore(redis, box).put_many({f"{i:04d}": f"pw-{i}" for i in range(300)})
    await ClientStates(redis, box).set("sub-1", "client-state-1")
    certificate = await CertificateStore(redis, box).current()
    await ServiceAccounts(redis, box, ["svc@contoso.test"]).set_password("svc@contoso.test", "pw")
    # The two stores whose writers need a live STARFACE or Entra: sealed as they seal them.
    for name, field, plain in (
        (keys.UCI_CALLBACK_SECRETS, "0001", "callback-token"),
        (keys.TOKEN_CACHES, "svc@contoso.test", '{"RefreshToken": {}}'),
    ):
        await redis.hset(name, field, box.seal(plain.encode(), f"{name}/{field}"))
    return certificate.id


async def test_every_store_reads_with_only_the_new_key_after_a_pass(redis_client: aioredis.Redis) -> None:
    certificate_id = await _fill_every_store(redis_client, SecretBox(OLD))
    rotating = SecretBox(NEW, previous=[OLD])

    dry = await reseal(redis_client, rotating, dry_run=True)
    assert (dry.resealed, dry.current, dry.unreadable) == (305, 0, [])
    report = await reseal(redis_client, rotating, batch_size=50)
    assert (report.resealed, report.current, report.remaining) == (305, 0, 0)
    again = await reseal(redis_client, rotating)
    assert (again.resealed, again.current) == (0, 305)

    new_only = SecretBox(NEW)
    assert await CredentialStore(redis_client, new_only).get("0299") == "pw-299"
    assert await ClientStates(redis_client, new_only).get_many(["sub-1"]) == {"sub-1": "client-state-1"}
    assert await CertificateStore(redis_client, new_only).get(certificate_id) is not None
    accounts = ServiceAccounts(redis_client, new_only, ["svc@contoso.test"])
    assert await accounts.password("svc@contoso.test") == "pw"
    for name, field in ((keys.UCI_CALLBACK_SECRETS, "0001"), (keys.TOKEN_CACHES, "svc@contoso.test")):
        sealed = await redis_client.hget(name, field)
        assert isinstance(sealed, bytes)
        assert new_only.open(sealed, f"{name}/{field}")


async def test_a_value_no_configured_key_opens_is_named_and_left_untouched(
    redis_client: aioredis.Redis,
) -> None:
    stranger = SecretBox("another-key-" + "x" * 32)
    await CredentialStore(redis_client, stranger).put("0001", "kept")
    await CredentialStore(redis_client, SecretBox(OLD)).put("0002", "moved")
    report = await reseal(redis_client, SecretBox(NEW, previous=[OLD]))
    assert report.unreadable == [f"{keys.STARFACE_CREDENTIALS}/0001"]
    assert report.resealed == 1
    # Left as it was, so adding the right key to BRIDGE_SECRET_KEY_PREVIOUS still rescues it.
    assert await CredentialStore(redis_client, stranger).get("0001") == "kept"


async def test_writes_during_the_pass_are_neither_lost_nor_rolled_back(redis_client: aioredis.Redis) -> None:
    logins = [f"{i:04d}" for i in range(2000)]
    await CredentialStore(redis_client, SecretBox(OLD)).put_many({login: "v0" for login in logins})
    rotating = SecretBox(NEW, previous=[OLD])
    latest: dict[str, str] = dict.fromkeys(logins, "v0")
    stop = asyncio.Event()

    async def write(box: SecretBox, step: int, offset: int) -> None:
        # One process already on the new key, one still on the old key only (not yet restarted).
        store, round_ = CredentialStore(redis_client, box), 0
        while not stop.is_set():
            round_ += 1
            batch = {login: f"v{round_}-{offset}" for login in logins[offset::step]}
            await store.put_many(batch)
            latest.update(batch)
            await asyncio.sleep(0)

    writers = [
        asyncio.create_task(write(rotating, 7, 0)),
        asyncio.create_task(write(SecretBox(OLD), 11, 3)),
    ]
    first = await reseal(redis_client, rotating, batch_size=20)
    stop.set()
    await asyncio.gather(*writers)
    # The lagging process has stopped (restarted with the new key): a second pass finishes.
    second = await reseal(redis_client, rotating, batch_size=20)
    assert first.unreadable == second.unreadable == []
    assert second.remaining == 0
    final = await reseal(redis_client, rotating, dry_run=True)
    assert (final.resealed, final.current) == (0, len(logins))
    new_only = CredentialStore(redis_client, SecretBox(NEW))
    for login in logins:
        assert await new_only.get(login) == latest[login], login
