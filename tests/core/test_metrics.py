from __future__ import annotations

import urllib.request
from collections.abc import Callable

import pytest
import redis.asyncio as aioredis

from service.core import keys
from service.core.embedded import free_port
from service.core.metrics import serve_metrics
from service.core.settings import Settings
from service.ops.gauges import refresh_gauges
from tests.fixtures.webhook import Bridge


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


async def test_metrics_are_served_on_their_own_port(bridge: Bridge) -> None:
    sub = await bridge.subscription()
    body = bridge.notifications.body([bridge.notifications.item(sub, bridge.certificate, "u1")])
    assert (await bridge.post(body)).status_code == 202
    bad = dict(body, value=[dict(body["value"][0], clientState="wrong")])
    assert (await bridge.post(bad)).status_code == 202
    port = free_port()
    serve_metrics(port)
    text = scrape(port)
    assert 'presence_bridge_notification_items_total{outcome="accepted"}' in text
    assert 'presence_bridge_notification_items_total{outcome="bad_client_state"}' in text
    assert 'presence_bridge_notification_ack_seconds_bucket{endpoint="notifications"' in text
    # The public web tier does not expose them.
    assert (await bridge.http.get("/metrics")).status_code == 404


async def test_gauges_describe_redis(redis_client: aioredis.Redis, settings_for_gauges: Settings) -> None:
    await redis_client.xadd(keys.DEAD_LETTER_STREAM, {"reason": "x"})
    await redis_client.xadd(keys.PRESENCE_STREAM, {"change": "{}"})
    await refresh_gauges(redis_client, settings_for_gauges)
    port = free_port()
    serve_metrics(port)
    text = scrape(port)
    assert "presence_bridge_dead_letters 1.0" in text
    assert 'presence_bridge_stream_length{stream="presence"} 1.0' in text


@pytest.fixture
def settings_for_gauges(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()
