"""Fixtures for the Graph-facing foundation: a signer that issues validationTokens as Entra does,
its JWKS served over real TLS, a notification factory, and the bridge served on loopback."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import redis.asyncio as aioredis
import uvicorn
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette

from service.app import Server, create_app
from service.certificates import CertificateStore, EncryptionCertificate
from service.clientstate import ClientStates, new_client_state
from service.crypto import encrypt_content
from service.embedded import free_port
from service.secretbox import SecretBox
from service.settings import Settings
from service.storage import connect_web
from service.tls import CertificateAuthority
from service.tokens import CHANGE_TRACKING_APP_ID
from tests.conftest import CLIENT_ID, TENANT_ID


def _b64url_uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class GraphSigner:
    """Signs validationTokens the way Entra does for Microsoft Graph Change Tracking."""

    def __init__(
        self, tenant_id: str = TENANT_ID, client_id: str = CLIENT_ID, kid: str = "test-kid-1"
    ) -> None:
        self.tenant_id = tenant_id
        self.client_id = client_id
        self.kid = kid
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwks(self) -> dict[str, Any]:
        numbers = self.key.public_key().public_numbers()
        return {
            "keys": [
                {
                    "kty": "RSA",
                    "use": "sig",
                    "kid": self.kid,
                    "n": _b64url_uint(numbers.n),
                    "e": _b64url_uint(numbers.e),
                }
            ]
        }

    def claims(self, version: str = "2.0", **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "aud": self.client_id,
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "tid": self.tenant_id,
            "ver": version,
        }
        if version == "2.0":
            claims.update(
                iss=f"https://login.microsoftonline.com/{self.tenant_id}/v2.0", azp=CHANGE_TRACKING_APP_ID
            )
        else:
            claims.update(iss=f"https://sts.windows.net/{self.tenant_id}/", appid=CHANGE_TRACKING_APP_ID)
        for name, value in overrides.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        return claims

    def token(
        self,
        version: str = "2.0",
        *,
        key: rsa.RSAPrivateKey | None = None,
        kid: str | None = None,
        **overrides: Any,
    ) -> str:
        return jwt.encode(
            self.claims(version, **overrides),
            key or self.key,
            algorithm="RS256",
            headers={"kid": kid or self.kid},
        )


@dataclass
class JwksServer:
    signer: GraphSigner
    base_url: str
    ca_file: Path
    failing: bool = False
    fetches: int = 0

    @property
    def metadata_url(self) -> str:
        return f"{self.base_url}/common/v2.0/.well-known/openid-configuration"


@pytest.fixture
async def jwks_server(tmp_path: Path) -> AsyncIterator[JwksServer]:
    ca = CertificateAuthority()
    ca_file = ca.write_ca(tmp_path / "ca.pem")
    ssl_context = ca.issue(["127.0.0.1"]).server_context(tmp_path / "tls")
    port = free_port()
    server = JwksServer(GraphSigner(), f"https://127.0.0.1:{port}", ca_file)

    async def metadata(request: web.Request) -> web.Response:
        server.fetches += 1
        if server.failing:
            return web.Response(status=500)
        return web.json_response(
            {
                "issuer": "https://login.microsoftonline.com/{tenantid}/v2.0",
                "jwks_uri": f"{server.base_url}/common/discovery/v2.0/keys",
            }
        )

    async def keyset(request: web.Request) -> web.Response:
        if server.failing:
            return web.Response(status=500)
        return web.json_response(server.signer.jwks())

    app = web.Application()
    app.router.add_get("/common/v2.0/.well-known/openid-configuration", metadata)
    app.router.add_get("/common/discovery/v2.0/keys", keyset)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ssl_context).start()
    yield server
    await runner.cleanup()


@dataclass
class Subscription:
    id: str
    client_state: str


@dataclass
class NotificationFactory:
    """Builds notification bodies exactly as Graph does: a fresh data key per item, HMAC, tokens."""

    signer: GraphSigner
    tenant_id: str = TENANT_ID
    sequence: int = 0
    tokens: list[str] = field(default_factory=list)

    def resource(
        self, user_id: str, availability: str, activity: str, sequence: str | None
    ) -> dict[str, Any]:
        resource: dict[str, Any] = {
            "@odata.type": "#microsoft.graph.presence",
            "@odata.id": f"users/{user_id}/presence",
            "id": user_id,
            "availability": availability,
            "activity": activity,
        }
        if sequence is not None:
            resource["sequenceNumber"] = sequence
        return resource

    def item(
        self,
        subscription: Subscription,
        certificate: EncryptionCertificate,
        user_id: str,
        availability: str = "Busy",
        activity: str = "InACall",
        *,
        sequence: str | None = None,
        resource: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        if sequence is None:
            self.sequence += 1
            sequence = f"{self.sequence:020d}"
        plaintext = json.dumps(resource or self.resource(user_id, availability, activity, sequence)).encode()
        return {
            "subscriptionId": subscription.id,
            "subscriptionExpirationDateTime": "2026-11-22T19:00:00.0000000Z",
            "clientState": subscription.client_state,
            "changeType": "updated",
            "resource": f"communications/presences/{user_id}",
            "tenantId": self.tenant_id,
            "organizationId": self.tenant_id,
            "resourceData": {
                "@odata.type": "#microsoft.graph.presence",
                "@odata.id": f"users/{user_id}/presence",
                "id": user_id,
            },
            "encryptedContent": encrypt_content(plaintext, certificate.certificate, certificate.id),
        }

    def body(self, items: list[dict[str, Any]], tokens: list[str] | None = None) -> dict[str, Any]:
        return {"value": items, "validationTokens": tokens if tokens is not None else [self.signer.token()]}


@dataclass
class Bridge:
    url: str
    http: httpx.AsyncClient
    redis: aioredis.Redis
    settings: Settings
    app: Starlette
    certificate: EncryptionCertificate
    notifications: NotificationFactory
    box: SecretBox

    async def subscription(self, subscription_id: str | None = None) -> Subscription:
        sub = Subscription(subscription_id or f"sub-{new_client_state()[:8]}", new_client_state())
        await ClientStates(self.redis, self.box).set(sub.id, sub.client_state)
        return sub

    async def post(self, body: Any, path: str = "/graph/notifications") -> httpx.Response:
        return await self.http.post(
            path, content=json.dumps(body).encode(), headers={"content-type": "application/json"}
        )

    async def queued(self) -> int:
        from service import keys

        return int(await self.redis.xlen(keys.PRESENCE_STREAM))

    async def dropped(self) -> dict[str, int]:
        from service import keys

        raw = await self.redis.hgetall(keys.DROPPED_COUNTS)
        return {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()}


async def stream_entries(redis: aioredis.Redis, stream: str) -> list[tuple[str, dict[str, str]]]:
    """A whole stream, decoded: entries as (id, fields) with text keys and values."""
    raw: Any = await redis.xrange(stream)

    def text(value: Any) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    return [(text(i), {text(k): text(v) for k, v in fields.items()}) for i, fields in raw or []]


async def start_server(app: Starlette, port: int) -> tuple[Server, asyncio.Task[None]]:
    server = Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on", log_level="warning"))
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    if task.done():
        task.result()
    return server, task


async def stop_server(server: Server, task: asyncio.Task[None]) -> None:
    server.should_exit = True
    await asyncio.wait_for(task, timeout=10)


BridgeFactory = Callable[..., Any]


@pytest.fixture
async def bridge_factory(
    make_settings: Callable[..., Settings], jwks_server: JwksServer
) -> AsyncIterator[Callable[..., Any]]:
    """Start the web tier over real HTTP; ``await bridge_factory(redis_url=..., **settings)``."""
    started: list[tuple[Server, asyncio.Task[None], httpx.AsyncClient, aioredis.Redis]] = []

    async def factory(redis_url: str | None = None, **overrides: Any) -> Bridge:
        env = {"OPENID_METADATA_URL": jwks_server.metadata_url, "EXTRA_CA_FILE": str(jwks_server.ca_file)}
        env.update(overrides)
        if redis_url is not None:
            env["REDIS_URL"] = redis_url
        settings = make_settings(**env)
        assert settings.redis_url is not None
        port = free_port()
        app = create_app(settings)
        server, task = await start_server(app, port)
        redis = connect_web(settings.redis_url)
        box = SecretBox(settings.secret_key)
        certificate = await CertificateStore(redis, box).current()
        http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10)
        started.append((server, task, http, redis))
        return Bridge(
            f"http://127.0.0.1:{port}",
            http,
            redis,
            settings,
            app,
            certificate,
            NotificationFactory(jwks_server.signer),
            box,
        )

    yield factory
    for server, task, http, redis in started:
        await http.aclose()
        await stop_server(server, task)
        await redis.aclose()


@pytest.fixture
async def bridge(bridge_factory: Callable[..., Any]) -> Bridge:
    result: Bridge = await bridge_factory()
    return result
