"""The access log of a real ``serve --role web``: one JSON event per request, no secret, off by a setting."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from service.core.embedded import free_port
from tests.cli.processes import CliProcess

CALLBACK_TOKEN = "cb-secret-token-0123456789"
VALIDATION = "validation-secret-abcdef"


def _serve_and_ask(env: dict[str, str], cwd: Path) -> list[dict[str, Any]]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = ["serve", "--role", "web", "--port", str(port), "--heartbeat-dir", str(cwd / "beats")]
    with CliProcess(args, env, cwd) as process, httpx.Client(trust_env=False, timeout=5) as http:
        process.wait_for_http(f"{base}/livez", headers={"x-request-id": "probe-1"})
        assert http.post(f"{base}/graph/notifications?validationToken={VALIDATION}").status_code == 200
        assert http.post(f"{base}/starface/uci/{CALLBACK_TOKEN}", content=b"<not xml").status_code < 500
        assert http.get(f"{base}/nowhere", headers={"x-request-id": "ask-404"}).status_code == 404
        process.stop()
    assert VALIDATION not in process.stderr
    assert CALLBACK_TOKEN not in process.stderr
    events = [json.loads(line) for line in process.stderr.splitlines() if line.startswith("{")]
    return [e for e in events if e["logger"] == "presence_bridge.access"]


def test_every_public_request_is_logged_as_json_without_its_secrets(
    redis_env: dict[str, str], tmp_path: Path
) -> None:
    events = _serve_and_ask(redis_env, tmp_path)
    by_path = {e["path"]: e for e in events}
    assert by_path["/livez"]["request_id"] == "probe-1"
    assert by_path["/livez"]["status"] == 200
    assert by_path["/graph/notifications"]["method"] == "POST"
    assert by_path["/graph/notifications"]["status"] == 200
    callback = by_path["/starface/uci/{token}"]
    assert callback["method"] == "POST"
    assert isinstance(callback["duration_ms"], float)
    assert by_path["/nowhere"] == {**by_path["/nowhere"], "status": 404, "request_id": "ask-404"}
    assert all(e["level"] == "info" for e in events)


def test_access_log_false_turns_it_off(redis_env: dict[str, str], tmp_path: Path) -> None:
    assert _serve_and_ask({**redis_env, "ACCESS_LOG": "false"}, tmp_path) == []
