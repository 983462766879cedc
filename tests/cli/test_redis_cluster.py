"""``REDIS_URL`` naming a Redis Cluster: refused at start in one line when it cannot serve the
bridge, and used by the commands when it can."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.core.embedded import free_port
from tests.cli.processes import describe, run_cli
from tests.fixtures.cluster import EmbeddedCluster


def _serve(env: dict[str, str], url: str, tmp_path: Path) -> tuple[int, str]:
    result = run_cli(
        ["serve", "--role", "web", "--port", str(free_port())], {**env, "REDIS_URL": url}, tmp_path
    )
    assert "Traceback" not in result.stderr, describe(result)
    return result.returncode, result.stderr


@pytest.mark.parametrize(
    ("scheme", "expected"),
    [("redis", "not reachable"), ("redis+cluster", "Redis Cluster cannot be connected")],
)
def test_an_unreachable_redis_is_one_line_at_start_exit_2(
    tmp_path: Path, core_env: dict[str, str], scheme: str, expected: str
) -> None:
    code, stderr = _serve(core_env, f"{scheme}://user:secretpw@127.0.0.1:{free_port()}", tmp_path)
    assert code == 2
    assert stderr.startswith("presence-bridge: cannot use REDIS_URL ")
    assert expected in stderr
    assert "secretpw" not in stderr
    assert len(stderr.splitlines()) == 1


def test_a_single_server_named_as_a_cluster_is_refused(
    tmp_path: Path, core_env: dict[str, str], redis_url: str
) -> None:
    code, stderr = _serve(core_env, redis_url.replace("redis://", "redis+cluster://"), tmp_path)
    assert code == 2
    assert "not a Redis Cluster: write redis://" in stderr


def test_a_cluster_node_named_as_a_single_server_is_refused(
    tmp_path: Path, core_env: dict[str, str], valkey_cluster: EmbeddedCluster, cluster_url: str
) -> None:
    code, stderr = _serve(core_env, f"redis://127.0.0.1:{valkey_cluster.nodes[1].port}", tmp_path)
    assert code == 2
    assert "names a node of a Redis Cluster: write redis+cluster://" in stderr


def test_status_reads_a_cluster(tmp_path: Path, core_env: dict[str, str], cluster_url: str) -> None:
    env = {**core_env, "REDIS_URL": cluster_url, "REDIS_PARTITIONS": "4"}
    result = run_cli(["status", "--json"], env, tmp_path)
    assert "Traceback" not in result.stderr, describe(result)
    report = json.loads(result.stdout)
    assert report["partitions"] == 4
    assert report["streams"]["presence"]["length"] == 0
