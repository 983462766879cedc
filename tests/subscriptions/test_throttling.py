"""Throttling: a 429 storm on every kind of call is waited out, and the pass still completes."""

from __future__ import annotations

from service.core import metrics
from subscriptions.renewal import Action
from tests.fixtures.subscription_world import WorldFactory


def _retries(status: str) -> float:
    return float(metrics.GRAPH_THROTTLED.labels(status)._value.get())


async def test_429_storm_completes_after_backing_off(subscription_world: WorldFactory) -> None:
    world = await subscription_world(users=1301, accounts=3, pre_resolved=True)
    world.add_users(40)  # these must be looked up through a throttled $batch
    handle = world.handle
    # Compress the sandbox's (and therefore the scheduler's) clock: Retry-After waits take little real time.
    handle.control("PUT", "/clock", {"speed": 100})
    handle.control("PUT", "/settings", {"throttleLimit": 1, "throttleWindowSeconds": 30})
    handle.control("POST", "/faults", {"path": "/v1.0/users", "status": 429, "retryAfter": 5, "count": 4})
    handle.control(
        "POST",
        "/faults",
        {"path": "/v1.0/communications/getPresencesByUserId", "status": 429, "retryAfter": 7, "count": 3},
    )
    handle.control(
        "POST", "/faults", {"method": "POST", "path": "/v1.0/subscriptions", "status": 503, "count": 2}
    )
    before_429, before_503 = _retries("429"), _retries("503")
    start = handle.sandbox.clock.now()
    report = await world.run_pass()
    assert report.ok, report.errors
    assert [o.action for o in report.outcomes] == [Action.CREATED] * 3
    assert sorted(await world.queued_resync_users()) == sorted(world.user_ids.values())
    assert report.resynced == 1341
    # Injected 429s (4 batch items + 3 reads) plus the sandbox's own limit (1 read per 30 s).
    assert _retries("429") - before_429 >= 4 + 3 + 2
    assert _retries("503") - before_503 == 2
    # The waits really happened, on the scheduler's clock: three reads in a 1-per-30 s window.
    assert handle.sandbox.clock.now() - start >= 60
