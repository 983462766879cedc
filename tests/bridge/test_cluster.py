"""The bridge on a real three-master Redis Cluster: partitions spread over the nodes, and every
script and transaction of the data path stays within one slot."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis.asyncio as aioredis

from service.core import keys
from service.core.partitions import Partitions
from service.core.settings import Settings
from service.core.storage import connect_worker
from service.graph.presence import PresenceChange, TeamsPresence
from tests.bridge.harness import FakeClock, Harness
from tests.fixtures.cluster import EmbeddedCluster

USER, LOGIN = "aaaa0000-0000-4000-8000-000000000001", "0001"


def test_the_partitions_spread_over_the_nodes_and_each_keeps_its_keys_together(
    valkey_cluster: EmbeddedCluster, cluster_url: str
) -> None:
    partitions = Partitions(12)
    homes: dict[int, set[int]] = {}
    for p in partitions.indexes():
        nodes = {
            valkey_cluster.node_of(key)
            for key in (
                keys.presence_stream(p),
                keys.call_stream(p),
                keys.reconcile_due(p),
                keys.reconcile_inflight(p),
            )
        }
        assert len(nodes) == 1, (p, nodes)  # one partition: one slot, one node
        homes.setdefault(nodes.pop(), set()).add(p)
    assert len(homes) == 3, homes  # every master serves some partitions
    # and a partition's keys live on another node than another partition's
    assert valkey_cluster.node_of(keys.presence_stream(min(homes[0]))) != valkey_cluster.node_of(
        keys.presence_stream(min(homes[1]))
    )


async def test_the_reconcile_path_runs_on_a_cluster(
    either_client: aioredis.Redis, make_settings: Callable[..., Settings], fake_clock: FakeClock
) -> None:
    """Worker, observed state, call events, due-set, decisions: nothing crosses a slot."""
    h = Harness(either_client, make_settings(WORKER_CLAIM_IDLE_MS=1), fake_clock, partitions=6)
    await h.link(USER, LOGIN)
    h.graph.set_own(USER, TeamsPresence("Available", "Available"))
    h.graph.publish(USER)
    await h.pump()
    assert h.starface.state[LOGIN] == (False, "Verfügbar")
    h.graph.set_own(USER, TeamsPresence("Busy", "InACall"))
    await h.pump()
    assert h.starface.state[LOGIN] == (True, "Im Gespräch")
    h.graph.set_own(USER, TeamsPresence("Available", "Available"))
    await h.pump()
    assert h.starface.state[LOGIN] == (False, "Verfügbar")
    await h.call_event(LOGIN, "call-1", "CONNECTED")
    await h.pump()
    assert h.graph.sessions[USER] == TeamsPresence("Busy", "InACall")
    await h.call_event(LOGIN, "call-1", "HANGUP")
    await h.pump()
    fake_clock.advance(6)  # past the hang-up debounce
    await h.pump()
    assert USER not in h.graph.sessions
    assert await either_client.xlen(keys.DEAD_LETTER_STREAM) == 0
    assert await h.reconciler.schedule.backlog(fake_clock()) == 0
    # A later recheck (the echo grace) waits in the user's own partition, and only there.
    home = h.partitions.of(USER)
    for partition in h.partitions.indexes():
        due = await either_client.zscore(keys.reconcile_due(partition), USER)
        assert (due is not None) == (partition == home), partition


async def test_a_wrong_cluster_url_is_refused_at_once(unused_tcp_port: int) -> None:
    client = connect_worker(f"redis+cluster://127.0.0.1:{unused_tcp_port}")
    with pytest.raises(Exception, match=r"(?i)connect|cluster"):
        await client.ping()
    await client.aclose()


async def test_a_master_killed_and_back_on_its_aof_loses_no_acknowledged_change(
    durable_cluster: EmbeddedCluster, make_settings: Callable[..., Settings], fake_clock: FakeClock
) -> None:
    """Changes queued (acknowledged to Graph) across six partitions; one master dies with kill -9
    before the workers read them and comes back on its append-only file: every change is applied."""
    durable_cluster.flush()
    client = connect_worker(durable_cluster.url)
    try:
        h = Harness(client, make_settings(WORKER_CLAIM_IDLE_MS=1), fake_clock, partitions=6)
        users = [f"aaaa0000-0000-4000-8000-{n:012d}" for n in range(60)]
        for n, user in enumerate(users):
            await h.link(user, f"{n:04d}")
        busy = [PresenceChange(u, "Busy", "InACall", received_at=fake_clock()) for u in users]
        await h.deliver(busy)
        victim = durable_cluster.node_of(keys.presence_stream(0))
        durable_cluster.restart(victim)
        await h.pump()
        for n, user in enumerate(users):
            observed = await client.hget(keys.observed_presence(user), "availability")
            assert observed == b"Busy", user
            assert h.starface.state[f"{n:04d}"] == (True, "Im Gespräch")
    finally:
        await client.aclose()
