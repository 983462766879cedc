"""``presence-bridge health`` and ``/livez`` against a real ``serve`` process: alive, stuck, gone."""

from __future__ import annotations

import os
import signal
import socket
import tempfile
import time
from pathlib import Path

import httpx

from service.core.embedded import free_port
from tests.cli.processes import CliProcess, describe, run_cli


def _health(role: str, beats: Path, cwd: Path, env: dict[str, str], *extra: str) -> tuple[int, str]:
    result = run_cli(["health", "--role", role, "--heartbeat-dir", str(beats), *extra], env, cwd)
    assert "Traceback" not in result.stderr, describe(result)
    return result.returncode, result.stdout + result.stderr


def test_health_follows_the_event_loop_of_a_serve_process(redis_env: dict[str, str], tmp_path: Path) -> None:
    beats = tmp_path / "beats"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    assert _health("web", beats, tmp_path, redis_env)[0] == 1  # nothing runs yet
    args = ["serve", "--role", "web", "--port", str(port), "--heartbeat-dir", str(beats)]
    # As systemd would run it (deploy/systemd/): the loop also feeds the service watchdog.
    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    manager_path = Path(tempfile.mkdtemp(prefix="pb-notify-")) / "notify"  # short: 108-byte limit
    manager.bind(str(manager_path))
    manager.settimeout(15)
    env = {**redis_env, "NOTIFY_SOCKET": str(manager_path)}
    with (
        manager,
        CliProcess(args, env, tmp_path) as process,
        httpx.Client(trust_env=False, timeout=2) as http,
    ):
        process.wait_for_http(f"{base}/livez")
        assert manager.recv(256) == b"WATCHDOG=1"
        code, text = _health("web", beats, tmp_path, redis_env)
        assert code == 0, text
        assert f"pid {process.process.pid}" in text
        code, text = _health("worker", beats, tmp_path, redis_env)
        assert code == 1, text
        assert "serve --role worker is not running here" in text
        # A stopped process is a stuck loop: its last beat ages until the probe fails.
        os.kill(process.process.pid, signal.SIGSTOP)
        try:
            time.sleep(2.5)
            code, text = _health("web", beats, tmp_path, redis_env, "--max-age", "2")
            assert code == 1, text
            assert "its event loop is stuck" in text
            try:
                http.get(f"{base}/livez", timeout=0.5)
            except httpx.TimeoutException:
                pass
            else:
                raise AssertionError("/livez answered while the process was stopped")
        finally:
            os.kill(process.process.pid, signal.SIGCONT)
        process.poll_until(
            lambda: _health("web", beats, tmp_path, redis_env)[0] == 0, timeout=15, what="a fresh heartbeat"
        )
        assert process.stop(signal.SIGTERM, timeout=10) == 0, process.output()
    # A clean stop leaves no beat that a probe could mistake for a live loop.
    assert _health("web", beats, tmp_path, redis_env)[0] == 1
