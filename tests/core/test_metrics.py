from __future__ import annotations

import platform
import time
import urllib.request
from collections.abc import Callable

import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from service.core import keys
from service.core.embedded import free_port
from service.core.metrics import package_version, serve_metrics
from service.core.settings import Settings
from service.ops.gauges import refresh_gauges
from service.starface.directory import DirectoryStore, Selection
from service.starface.rest import StarfaceUser
from service.starface.sessions import SessionStatus
from subscriptions.records import SubscriptionRecord, SubscriptionRecords
from tests.fixtures.webhook import Bridge

ACCOUNT = "presence-sync-1@example.com"


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
    await redis_client.xadd(keys.presence_stream(0), {"change": "{}"})
    await refresh_gauges(redis_client, settings_for_gauges)
    port = free_port()
    serve_metrics(port)
    text = scrape(port)
    assert "presence_bridge_dead_letters 1.0" in text
    assert 'presence_bridge_stream_length{stream="presence"} 1.0' in text


def sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


async def test_gauges_show_sessions_directory_backlog_workers_and_expiry(
    redis_client: aioredis.Redis, settings_for_gauges: Settings
) -> None:
    now = time.time()
    up = SessionStatus("0001", "active", now)
    down = SessionStatus("0002", "failed", now, error="unreachable", detail="timeout")
    await redis_client.hset(keys.UCI_SESSIONS, mapping={"0001": up.to_json(), "0002": down.to_json()})
    users = (StarfaceUser(1, "0001", "anna@example.com"), StarfaceUser(2, "0002", "bob@example.com"))
    await DirectoryStore(redis_client).save(Selection(users, ()), refreshed_at=now - 60)
    # Two users due already, one only later: the backlog is what is due now.
    await redis_client.zadd(keys.reconcile_due(0), {"u1": now - 5, "u2": now - 1, "u3": now + 3600})
    # One worker beating, one that stopped long ago.
    await redis_client.zadd(keys.LIVE_WORKERS, {"w1": now, "w2": now - 3600})
    await SubscriptionRecords(redis_client).put(SubscriptionRecord(ACCOUNT, id="s1", expires_at=now + 3000))
    await refresh_gauges(redis_client, settings_for_gauges)
    assert sample("presence_bridge_starface_sessions", state="up") == 1
    assert sample("presence_bridge_starface_sessions", state="down") == 1
    assert sample("presence_bridge_directory_users") == 2
    assert sample("presence_bridge_directory_last_refresh_timestamp_seconds") == pytest.approx(now - 60)
    assert sample("presence_bridge_reconcile_backlog") == 2
    assert sample("presence_bridge_workers_alive") == 1
    # A timestamp, not "seconds from now": it stays right between refreshes.
    expiry = sample("presence_bridge_subscription_expiry_timestamp_seconds", account=ACCOUNT)
    assert expiry == pytest.approx(now + 3000)


async def test_gauges_of_an_empty_bridge_say_nothing_is_there(
    redis_client: aioredis.Redis, settings_for_gauges: Settings
) -> None:
    await refresh_gauges(redis_client, settings_for_gauges)
    assert sample("presence_bridge_workers_alive") == 0
    assert sample("presence_bridge_directory_users") == 0
    assert sample("presence_bridge_directory_last_refresh_timestamp_seconds") == 0
    assert sample("presence_bridge_reconcile_backlog") == 0
    assert sample("presence_bridge_starface_sessions", state="up") == 0


def test_build_info_names_the_installed_version_and_python() -> None:
    assert package_version() != "unknown"  # the tests run against the installed package
    labels = {"version": package_version(), "python": platform.python_version()}
    assert sample("presence_bridge_build_info", **labels) == 1


@pytest.fixture
def settings_for_gauges(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(GRAPH_SERVICE_ACCOUNTS=ACCOUNT)
