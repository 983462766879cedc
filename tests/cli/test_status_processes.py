"""``status`` against real ``serve`` processes: healthy parts are seen, a stopped worker and a killed
scheduler are named as problems, through the state the processes themselves keep in Redis."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

from service.core.embedded import free_port
from tests.cli.processes import CliProcess, describe, run_cli


def _status(env: dict[str, str], cwd: Path) -> tuple[int, dict[str, Any]]:
    result = run_cli(["status", "--json"], env, cwd)
    assert result.returncode in (0, 1), describe(result)
    return result.returncode, json.loads(result.stdout)


def _wait_for(env: dict[str, str], cwd: Path, what: str, check: Any, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        _, report = _status(env, cwd)
        if check(report):
            return report
        assert time.monotonic() < deadline, f"status never showed {what}: {report['problems']}"
        time.sleep(0.3)


def test_status_names_a_stopped_worker_and_a_killed_scheduler(
    redis_env: dict[str, str], tmp_path: Path
) -> None:
    env = {
        **redis_env,
        # The roles need these settings; nothing here reaches STARFACE or Graph.
        "AZURE_CLIENT_SECRET": "unused",
        "STARFACE_BASE_URL": f"https://127.0.0.1:{free_port()}",
        "STARFACE_ADMIN_LOGIN": "0000",
        "STARFACE_ADMIN_PASSWORD": "unused",
        "GRAPH_SERVICE_ACCOUNTS": "sync@example.com",
        "SCHEDULER_LEASE_SECONDS": "2",
        "LOG_LEVEL": "WARNING",
    }

    def serve(role: str) -> CliProcess:
        beats = tmp_path / f"beats-{role}"
        return CliProcess(["serve", "--role", role, "--heartbeat-dir", str(beats)], env, tmp_path)

    with serve("worker") as worker, serve("scheduler") as scheduler:
        report = _wait_for(
            env,
            tmp_path,
            "a live worker and a scheduler lease",
            lambda r: r["workers_alive"] == 1 and r["scheduler_lease"],
        )
        assert not any("worker" in p or "lease" in p for p in report["problems"]), report["problems"]
        # The directory is unreachable here, and status says so rather than calling it healthy.
        code, report = _status(env, tmp_path)
        assert code == 1
        assert any("STARFACE directory" in p for p in report["problems"]), report["problems"]

        assert worker.stop(signal.SIGTERM, timeout=20) == 0, worker.output()
        _wait_for(env, tmp_path, "no worker", lambda r: any("no worker is alive" in p for p in r["problems"]))
        scheduler.process.kill()
        scheduler.process.wait(timeout=10)
        _wait_for(
            env,
            tmp_path,
            "no lease",
            lambda r: any(p.startswith("no scheduler holds the lease") for p in r["problems"]),
        )
    text = run_cli(["status"], env, tmp_path)
    assert text.returncode == 1, describe(text)
    assert "  - no worker is alive" in text.stdout
    assert "  - no scheduler holds the lease" in text.stdout
