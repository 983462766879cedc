"""The Starlette application of the web tier; its lifespan owns every resource it uses."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

import aiohttp
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from service.core.logs import RequestIdMiddleware
from service.core.secretbox import SecretBox
from service.core.settings import Settings
from service.core.storage import connect_web
from service.core.tls import client_context
from service.graph.certificates import CertificateStore
from service.graph.clientstate import ClientStates
from service.graph.validation_tokens import SigningKeys, TokenVerifier
from service.web import graph_endpoints as webhook
from service.web.access import AccessLogMiddleware
from service.web.admission import BodyDeadline, Shedding


def http_session_factory(settings: Settings) -> Callable[[], aiohttp.ClientSession]:
    """aiohttp sessions that trust the system CAs plus ``EXTRA_CA_FILE`` (e.g. a sandbox CA)."""
    ssl_context = client_context(settings.extra_ca_file)

    def factory() -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ssl_context),
            timeout=aiohttp.ClientTimeout(total=15, connect=5),
        )

    return factory


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def livez(request: Request) -> Response:
    # Answered by a coroutine on the serving loop: a stuck loop cannot answer it.
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    problems = []
    try:
        await request.app.state.redis.ping()
    except (RedisError, OSError):
        problems.append("redis unreachable")
    if not request.app.state.signing_keys.ready:
        problems.append("signing keys not loaded")
    if problems:
        return JSONResponse({"status": "unready", "problems": problems}, status_code=503)
    return JSONResponse({"status": "ready"})


def create_app(
    settings: Settings, *, redis_url: str | None = None, extra_routes: list[BaseRoute] | None = None
) -> Starlette:
    url = redis_url or settings.redis_url
    if url is None:
        raise ValueError("create_app needs a Redis URL (REDIS_URL or the embedded server's)")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        redis = connect_web(url)
        box = SecretBox.from_settings(settings)
        signing_keys = SigningKeys(
            settings.openid_metadata_url,
            http_session_factory(settings),
            refresh_seconds=settings.jwks_refresh_seconds,
        )
        await signing_keys.start()
        app.state.settings = settings
        app.state.redis = redis
        app.state.box = box
        app.state.signing_keys = signing_keys
        app.state.ingest = webhook.Ingest(
            redis=redis,
            client_states=ClientStates(redis, box),
            certificates=CertificateStore(redis, box),
            verifier=TokenVerifier(signing_keys, tenant_id=settings.tenant_id, client_id=settings.client_id),
            tenant_id=settings.tenant_id,
            max_bytes=settings.notification_max_bytes,
            stream_maxlen=settings.presence_stream_maxlen,
            partitions=settings.partitions,
        )
        try:
            yield
        finally:
            await signing_keys.stop()
            await redis.aclose()

    routes: list[BaseRoute] = [
        *webhook.routes(),
        Route("/healthz", healthz),
        Route("/livez", livez),
        Route("/readyz", readyz),
        *(extra_routes or []),
    ]
    # Shedding first: a request beyond the cap costs as little as possible (no id, no log line).
    middleware = [
        Middleware(Shedding, max_in_flight=settings.web_max_in_flight),
        Middleware(RequestIdMiddleware),
    ]
    if settings.access_log:
        # Inside the request id middleware, so each access event carries the request's id.
        middleware.append(Middleware(AccessLogMiddleware))
    middleware.append(Middleware(BodyDeadline, body_seconds=settings.web_body_timeout_seconds))
    return Starlette(routes=routes, lifespan=lifespan, middleware=middleware)
