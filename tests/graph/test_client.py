"""The Graph client's patience: Retry-After, per-item batch retries, and a bounded number of tries."""

from __future__ import annotations

import email.utils
from collections.abc import Callable

import pytest

from service.core.tls import client_context
from service.graph.client import (
    BatchRequest,
    GraphClient,
    GraphError,
    GraphUnavailable,
    RateLimiter,
    retry_after,
)
from service.sandbox.clock import Clock
from tests.fixtures.graph_sandbox import GraphSandboxHandle


def test_retry_after_seconds_and_http_date() -> None:
    assert retry_after({"Retry-After": "7"}, 0) == 7
    date = email.utils.formatdate(1_000_030, usegmt=True)
    assert retry_after({"retry-after": date}, 1_000_000) == pytest.approx(30)
    assert retry_after({}, 0) is None
    assert retry_after({"Retry-After": "soon"}, 0) is None


async def test_rate_limiter_spaces_requests_on_its_clock() -> None:
    clock = Clock(speed=1000)
    limiter = RateLimiter(3, 30, clock)
    start = clock.now()
    for _ in range(7):
        await limiter.acquire()
    assert clock.now() - start >= 60  # the 4th and 7th request each waited a full window


async def test_client_gives_up_after_bounded_attempts(
    graph_sandbox: Callable[..., GraphSandboxHandle],
) -> None:
    handle = graph_sandbox(clock_speed=1000)
    handle.control(
        "POST",
        "/faults",
        {"path": "/v1.0/communications/getPresencesByUserId", "status": 429, "retryAfter": 2, "count": 50},
    )
    client = GraphClient(
        handle.base_url,
        ssl_context=client_context(handle.ca_file),
        clock=handle.sandbox.clock,
        max_attempts=4,
    )
    try:
        token = handle.app_token()
        with pytest.raises(GraphUnavailable) as caught:
            await client.request(
                "POST", "/v1.0/communications/getPresencesByUserId", token=token, body={"ids": []}
            )
        assert caught.value.status == 429
        assert token not in str(caught.value)
        with pytest.raises(GraphError) as refused:
            await client.request("GET", "/v1.0/subscriptions", token="not-a-token")
        assert refused.value.status == 401
        assert "not-a-token" not in str(refused.value)
    finally:
        await client.close()


async def test_batch_retries_only_throttled_items(graph_sandbox: Callable[..., GraphSandboxHandle]) -> None:
    handle = graph_sandbox(clock_speed=1000)
    users = [handle.sandbox.add_user(f"User {i}", mail=f"u{i}@example.test") for i in range(25)]
    handle.control("POST", "/faults", {"path": "/v1.0/users/*", "status": 429, "retryAfter": 3, "count": 4})
    client = GraphClient(
        handle.base_url, ssl_context=client_context(handle.ca_file), clock=handle.sandbox.clock
    )
    try:
        items = [BatchRequest("GET", f"/users/{u.id}?$select=id") for u in users]
        responses = await client.batch(items, token=handle.app_token())
        assert [r.status for r in responses] == [200] * 25
        assert [r.body["id"] for r in responses] == [u.id for u in users]
    finally:
        await client.close()
