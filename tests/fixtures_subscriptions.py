"""Fixtures for the subscriptions tests (a pytest plugin registered in tests/conftest.py).

``subscription_world`` builds the whole arrangement the scheduler lives in: a Graph sandbox with
users and service accounts, a TLS receiver standing in for the web tier at PUBLIC_BASE_URL, real
Valkey, settings pointing at all of them, and a scheduler whose clock is the sandbox's clock so a
test can compress hours into a few passes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.asyncio as aioredis

from service import keys
from service.certificates import CertificateStore
from service.crypto import decrypt_content
from service.presence import PresenceChange
from service.queue import append_lifecycle_batch
from service.secretbox import SecretBox
from service.settings import Settings
from subscriptions.accounts import ServiceAccounts
from subscriptions.scheduler import PassReport, Scheduler, build_scheduler
from subscriptions.tokens import Tokens
from tests.fixtures_graph import GraphReceiver, GraphSandboxHandle

SERVICE_PASSWORD = "Service-Passw0rd!"


def service_account_names(count: int) -> list[str]:
    return [f"svc{i + 1}@sandbox.onmicrosoft.com" for i in range(count)]


@dataclass
class World:
    handle: GraphSandboxHandle
    receiver: GraphReceiver
    redis: aioredis.Redis
    settings: Settings
    scheduler: Scheduler
    emails: list[str]
    user_ids: dict[str, str]
    accounts: list[str]
    forwarded: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def box(self) -> SecretBox:
        return SecretBox(self.settings.secret_key)

    def tokens(self) -> Tokens:
        return Tokens(
            self.redis,
            self.box,
            ServiceAccounts(self.redis, self.box, self.accounts),
            tenant_id=self.settings.tenant_id,
            client_id=self.settings.client_id,
            client_secret=self.settings.client_secret,
            authority_base_url=self.settings.authority_base_url,
            extra_ca_file=self.settings.extra_ca_file,
        )

    async def forward_lifecycle(self) -> int:
        """Do what the web tier does with lifecycle POSTs: queue them on the lifecycle stream."""
        items = self.receiver.items("graph/lifecycle")
        new = items[self.forwarded :]
        if new:
            await append_lifecycle_batch(self.redis, new, 10_000)
        self.forwarded = len(items)
        return len(new)

    async def settle(self, timeout: float = 3.0) -> None:
        """Wait until the sandbox has delivered every notification and lifecycle event it queued."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (
            self.handle.control("GET", "/deliveries?since=999999999")["inFlight"] and loop.time() < deadline
        ):
            await asyncio.sleep(0.02)

    async def run_pass(self, now: float | None = None) -> PassReport:
        await self.forward_lifecycle()
        return await self.scheduler.run_once(now)

    def sandbox_subscriptions(self, *, active_only: bool = True) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.handle.control("GET", "/subscriptions")["value"]
        return [s for s in items if s["active"] or not active_only]

    def add_users(self, count: int, start: int | None = None) -> list[str]:
        first = len(self.emails) if start is None else start
        added = []
        for index in range(first, first + count):
            email = f"user{index:05d}@example.test"
            account = self.handle.sandbox.add_user(f"User {index:05d}", mail=email)
            self.user_ids[email] = account.id
            self.emails.append(email)
            added.append(email)
        return added

    async def queued_resync_users(self) -> list[str]:
        entries = await self.redis.xrange(keys.PRESENCE_STREAM) or []
        users = []
        for _id, fields in entries:
            decoded = {
                (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                for k, v in (fields or {}).items()
            }
            change = PresenceChange.from_fields(decoded)
            if change.source == "resync":
                users.append(change.user_id)
        return users

    async def decrypt_all(self) -> list[dict[str, Any]]:
        """Every change notification item received, decrypted with the key its id names."""
        store = CertificateStore(self.redis, self.box)
        opened = []
        for item in self.receiver.items("graph/notifications"):
            encrypted = item["encryptedContent"]
            certificate = await store.get(encrypted["encryptionCertificateId"])
            assert certificate is not None, f"no key for {encrypted['encryptionCertificateId']}"
            opened.append(json.loads(decrypt_content(encrypted, certificate.private_key)))
        return opened


WorldFactory = Callable[..., Any]


@pytest.fixture
async def subscription_world(
    graph_sandbox: Callable[..., GraphSandboxHandle],
    graph_receiver: Callable[..., GraphReceiver],
    make_settings: Callable[..., Settings],
    redis_url: str,
) -> AsyncIterator[WorldFactory]:
    """Factory: ``await subscription_world(users=1301, accounts=3)`` → a ``World`` ready for passes."""
    worlds: list[World] = []
    clients: list[aioredis.Redis] = []

    async def factory(
        *,
        users: int = 10,
        accounts: int = 1,
        login: bool = True,
        sandbox_options: dict[str, Any] | None = None,
        renewal_options: dict[str, float] | None = None,
        settings_overrides: dict[str, Any] | None = None,
        pre_resolved: bool = False,
    ) -> World:
        handle = graph_sandbox(**(sandbox_options or {}))
        receiver = graph_receiver(handle.sandbox.ca)
        assert receiver.server is not None
        names = service_account_names(accounts)
        for name in names:
            handle.add_service_account(name, SERVICE_PASSWORD)
        settings = make_settings(
            AZURE_TENANT_ID=handle.tenant_id,
            AZURE_CLIENT_ID=handle.client_id,
            AZURE_CLIENT_SECRET=handle.client_secret,
            GRAPH_BASE_URL=handle.base_url,
            AUTHORITY_BASE_URL=handle.base_url,
            EXTRA_CA_FILE=handle.ca_file,
            PUBLIC_BASE_URL=receiver.server.base_url,
            GRAPH_SERVICE_ACCOUNTS=",".join(names),
            **(settings_overrides or {}),
        )
        redis = aioredis.Redis.from_url(redis_url)
        clients.append(redis)
        emails: list[str] = []

        async def email_source() -> list[str]:
            return list(emails)

        scheduler = build_scheduler(
            settings,
            redis,
            email_source,
            clock=handle.sandbox.clock,
            renewal_options=renewal_options,
        )
        world = World(handle, receiver, redis, settings, scheduler, emails, {}, names)
        world.add_users(users)
        worlds.append(world)
        if pre_resolved:
            # Big worlds test shards, not lookups: skip thousands of sandbox user searches.
            now = handle.sandbox.clock.now()
            await redis.hset(
                keys.USER_IDS,
                mapping={e: json.dumps({"id": i, "checked_at": now}) for e, i in world.user_ids.items()},
            )
        if login:
            tokens = world.tokens()
            for name in names:
                await tokens.login_with_password(name, SERVICE_PASSWORD)
        return world

    yield factory
    for world in worlds:
        await world.scheduler.close()
    for client in clients:
        await client.aclose()
