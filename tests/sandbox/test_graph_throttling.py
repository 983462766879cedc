"""Graph sandbox: presence rate limit (429 + Retry-After), JSON batching, injected faults."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from msal.exceptions import MsalServiceError

from tests.fixtures.graph_sandbox import GRAPH_DEFAULT_SCOPE, GraphSandboxHandle

SandboxFactory = Callable[..., GraphSandboxHandle]


def _presence_steps(user: str, count: int, start: int = 0) -> dict[str, Any]:
    return {
        "requests": [
            {"id": str(start + n), "method": "GET", "url": f"/users/{user}/presence"} for n in range(count)
        ]
    }


def test_presence_requests_beyond_the_limit_get_429(graph_sandbox: SandboxFactory) -> None:
    handle = graph_sandbox()
    user = handle.add_user("Anna Alpha")["id"]
    handle.control("PUT", "/settings", {"throttleLimit": 5, "throttleWindowSeconds": 30})
    token = handle.app_token()
    for _ in range(5):
        assert handle.graph("GET", f"users/{user}/presence", token).status_code == 200
    throttled = handle.graph("GET", f"users/{user}/presence", token)
    assert throttled.status_code == 429
    assert 1 <= int(throttled.headers["Retry-After"]) <= 30
    assert throttled.json()["error"]["code"] == "TooManyRequests"
    # Non-presence APIs have their own budget; another app has its own presence budget.
    assert handle.graph("GET", "users", token).status_code == 200
    other = handle.control(
        "POST", "/apps", {"clientSecret": "other-secret", "applicationPermissions": ["Presence.Read.All"]}
    )
    assert handle.graph(
        "GET", f"users/{user}/presence", handle.app_token(other["clientId"], "other-secret")
    ).ok
    handle.advance(30)
    assert handle.graph("GET", f"users/{user}/presence", token).status_code == 200


def test_default_limit_is_1500_per_30_seconds(graph_sandbox: SandboxFactory) -> None:
    handle = graph_sandbox()
    user = handle.add_user("Anna Alpha")["id"]
    token = handle.app_token()
    statuses: list[int] = []
    for batch in range(1500 // 20):
        response = handle.graph("POST", "$batch", token, _presence_steps(user, 20, batch * 20))
        assert response.status_code == 200
        statuses += [r["status"] for r in response.json()["responses"]]
    assert statuses == [200] * 1500
    over = handle.graph("POST", "$batch", token, _presence_steps(user, 2))
    assert [r["status"] for r in over.json()["responses"]] == [429, 429]


def test_batch_answers_per_item(graph_sandbox: SandboxFactory) -> None:
    handle = graph_sandbox()
    user = handle.add_user("Anna Alpha")["id"]
    token = handle.app_token()
    too_big = handle.graph("POST", "$batch", token, _presence_steps(user, 21))
    assert too_big.status_code == 400
    assert too_big.json()["error"]["code"] == "BadRequest"
    handle.control("PUT", "/settings", {"throttleLimit": 3})
    mixed = {
        "requests": [
            {
                "id": "set",
                "method": "POST",
                "url": f"/users/{user}/presence/setPresence",
                "headers": {"Content-Type": "application/json"},
                "body": {"sessionId": handle.client_id, "availability": "Busy", "activity": "InACall"},
            },
            {"id": "get", "method": "GET", "url": f"/users/{user}/presence"},
            {"id": "bad", "method": "GET", "url": "/nonsense/segment"},
            {"id": "missing", "method": "GET", "url": "/users/00000000-0000-0000-0000-000000000001"},
            {"id": "third", "method": "GET", "url": f"/communications/presences/{user}"},
            {"id": "throttled", "method": "GET", "url": f"/users/{user}/presence"},
        ]
    }
    response = handle.graph("POST", "$batch", token, mixed)
    assert response.status_code == 200
    by_id = {r["id"]: r for r in response.json()["responses"]}
    assert {k: v["status"] for k, v in by_id.items()} == {
        "set": 200,
        "get": 200,
        "bad": 400,
        "missing": 404,
        "third": 200,
        "throttled": 429,
    }
    assert (by_id["get"]["body"]["availability"], by_id["get"]["body"]["activity"]) == ("Busy", "InACall")
    assert int(by_id["throttled"]["headers"]["Retry-After"]) >= 1
    assert by_id["throttled"]["body"]["error"]["code"] == "TooManyRequests"
    unauthenticated = handle.graph("POST", "$batch", None, _presence_steps(user, 1))
    assert unauthenticated.json()["responses"][0]["status"] == 401


def test_faults_fail_or_stall_the_next_requests(graph_sandbox: SandboxFactory) -> None:
    handle = graph_sandbox()
    user = handle.add_user("Anna Alpha")["id"]
    token = handle.app_token()
    handle.control(
        "POST", "/faults", {"method": "GET", "path": "/v1.0/users/*/presence", "count": 2, "status": 503}
    )
    assert [handle.graph("GET", f"users/{user}/presence", token).status_code for _ in range(3)] == [
        503,
        503,
        200,
    ]
    handle.control("POST", "/faults", {"path": "/v1.0/users/*/presence", "stallSeconds": 0.6})
    begin = time.monotonic()
    assert handle.graph("GET", f"users/{user}/presence", token).status_code == 200
    assert time.monotonic() - begin >= 0.6
    begin = time.monotonic()
    assert handle.graph("GET", f"users/{user}/presence", token).status_code == 200
    assert time.monotonic() - begin < 0.6
    # Entra's endpoints fail on demand too, and MSAL sees the failure.
    handle.control(
        "POST", "/faults", {"method": "POST", "path": f"/{handle.tenant_id}/oauth2/v2.0/token", "status": 500}
    )
    with pytest.raises(MsalServiceError, match="500"):
        handle.confidential_app().acquire_token_for_client(scopes=[GRAPH_DEFAULT_SCOPE])
    assert handle.control("GET", "/faults")["value"] == []
