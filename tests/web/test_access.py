"""The access log middleware at its edges: secrets, odd paths, a crash, a client that left."""

from __future__ import annotations

import contextlib
import json
import logging

import pytest
from starlette.types import Message, Receive, Scope, Send

from service.core.logs import JsonFormatter
from service.web.access import CLIENT_GONE, AccessLogMiddleware, loggable_path


def test_loggable_path_hides_the_callback_token_and_survives_any_path() -> None:
    assert loggable_path("/starface/uci/abcDEF123") == "/starface/uci/{token}"
    assert loggable_path("/starface/uci/abc/extra") == "/starface/uci/{token}/extra"
    assert loggable_path("/graph/notifications") == "/graph/notifications"
    assert len(loggable_path("/" + "a" * 5000)) == 203
    odd = loggable_path("/\ud800x")  # a lone surrogate, as a percent-decoded path may hold
    odd.encode("utf-8")
    assert "x" in odd


async def _call(app: object, caplog: pytest.LogCaptureFixture) -> dict[str, object]:
    scope: Scope = {"type": "http", "method": "POST", "path": "/starface/uci/secret", "headers": []}

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        return None

    middleware = AccessLogMiddleware(app)  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO, logger="presence_bridge.access"), contextlib.suppress(RuntimeError):
        await middleware(scope, receive, send)
    (record,) = [r for r in caplog.records if r.name == "presence_bridge.access"]
    event: dict[str, object] = json.loads(JsonFormatter().format(record))
    return event


async def test_an_app_that_crashes_is_logged_as_500(caplog: pytest.LogCaptureFixture) -> None:
    async def crash(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("boom")

    event = await _call(crash, caplog)
    assert (event["status"], event["path"]) == (500, "/starface/uci/{token}")


async def test_a_request_answered_never_is_logged_as_client_gone(caplog: pytest.LogCaptureFixture) -> None:
    async def silent(scope: Scope, receive: Receive, send: Send) -> None:
        return None  # as when the client disconnected before the answer

    event = await _call(silent, caplog)
    assert event["status"] == CLIENT_GONE
    assert event["method"] == "POST"
