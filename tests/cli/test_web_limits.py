"""A real ``serve --role web`` against slow and excess clients: cut at the deadline, shed at the cap."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.core.embedded import free_port
from tests.cli.processes import CliProcess

HEADER_SECONDS = 2
BODY_SECONDS = 2


@pytest.fixture
def web(redis_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[int, int]]:
    port, metrics_port = free_port(), free_port()
    env = {
        **redis_env,
        "WEB_HEADER_TIMEOUT_SECONDS": str(HEADER_SECONDS),
        "WEB_BODY_TIMEOUT_SECONDS": str(BODY_SECONDS),
        "WEB_MAX_IN_FLIGHT": "2",
        "LOG_LEVEL": "WARNING",
    }
    args = ["serve", "--role", "web", "--port", str(port), "--metrics-port", str(metrics_port)]
    with CliProcess([*args, "--heartbeat-dir", str(tmp_path / "beats")], env, tmp_path) as process:
        process.wait_for_http(f"http://127.0.0.1:{port}/livez")
        yield port, metrics_port
        process.stop()


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.settimeout(10)
    return sock


def _closed_after(sock: socket.socket, dribble: bytes = b"", every: float = 0.3) -> float:
    """Seconds until the server closes ``sock`` while we send ``dribble`` a byte at a time."""
    started = time.monotonic()
    sock.settimeout(every)
    for byte in dribble:
        try:
            sock.sendall(bytes([byte]))
            if sock.recv(1024) == b"":
                return time.monotonic() - started
        except TimeoutError:
            continue
        except OSError:
            return time.monotonic() - started
    sock.settimeout(10)
    try:
        while sock.recv(1024):
            pass
    except OSError:
        pass
    return time.monotonic() - started


def _metric(metrics_port: int, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
    found = re.search(rf"^{name} ([0-9.e+]+)$", text, flags=re.M)
    return float(found.group(1)) if found else 0.0


def test_a_silent_connection_and_dribbled_headers_are_cut_at_the_deadline(web: tuple[int, int]) -> None:
    port, _ = web
    with _connect(port) as silent:
        waited = _closed_after(silent)
    with _connect(port) as dribbler:
        request = b"POST /graph/notifications HTTP/1.1\r\nHost: bridge\r\nX-Slow: " + b"a" * 200
        dribbled = _closed_after(dribbler, request)
    assert HEADER_SECONDS <= waited < HEADER_SECONDS + 2.5
    assert HEADER_SECONDS <= dribbled < HEADER_SECONDS + 2.5
    # A client that sends at normal speed is served as before.
    assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200


def test_a_dribbled_body_gets_408_at_its_deadline(web: tuple[int, int]) -> None:
    port, metrics_port = web
    with _connect(port) as sock:
        sock.sendall(
            b"POST /graph/notifications HTTP/1.1\r\nHost: bridge\r\nContent-Type: application/json\r\n"
            b"Content-Length: 500\r\n\r\n{"
        )
        started = time.monotonic()
        answer = b""
        sock.settimeout(0.3)
        while b"\r\n\r\n" not in answer and time.monotonic() - started < 10:
            try:
                sock.sendall(b" ")
                answer += sock.recv(4096)
            except TimeoutError:
                continue
        elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert BODY_SECONDS - 0.5 <= elapsed < BODY_SECONDS + 2
    assert _metric(metrics_port, "presence_bridge_request_body_timeouts_total") == 1


def test_beyond_the_cap_requests_are_shed_at_once_and_never_parsed(web: tuple[int, int]) -> None:
    port, metrics_port = web
    holders = [_connect(port), _connect(port)]
    try:
        for sock in holders:  # two requests in progress, their bodies still coming
            sock.sendall(
                b"POST /graph/notifications HTTP/1.1\r\nHost: bridge\r\nContent-Length: 100\r\n\r\n{"
            )
        time.sleep(0.3)
        started = time.monotonic()
        shed = httpx.post(f"http://127.0.0.1:{port}/graph/notifications", content=b'{"value": []}')
        took = time.monotonic() - started
        assert shed.status_code == 503
        assert shed.headers["retry-after"] == "1"
        assert took < 0.5
        assert httpx.get(f"http://127.0.0.1:{port}/livez").status_code == 200  # health is never shed
        assert _metric(metrics_port, "presence_bridge_requests_shed_total") == 1
        # Nothing of the shed request was read: no notification outcome was counted for it.
        assert (
            "presence_bridge_notification_items_total{"
            not in httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
        )
    finally:
        for sock in holders:
            sock.close()
    # Once the held requests are gone, requests are admitted again.
    time.sleep(0.3)
    assert httpx.post(f"http://127.0.0.1:{port}/graph/notifications", content=b"[]").status_code == 400
