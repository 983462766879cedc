from __future__ import annotations

import json
import logging
import sys

import pytest

from service.core.logs import JsonFormatter, redact
from tests.fixtures.webhook import Bridge


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("Authorization: Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJl", "eyJhbGci"),
        ("POST /xml-rpc?de.vertico.starface.auth=0001:abcdef0123456789&x=1", "abcdef0123456789"),
        ("connect redis://:hunter2@cache:6379/0 failed", "hunter2"),
        ('{"password": "s3cr3t!"}', "s3cr3t!"),
        ("clientState=Zm9vYmFyYmF6cXV4", "Zm9vYmFyYmF6cXV4"),
        ("token=abc.def.ghi", "abc.def.ghi"),
    ],
)
def test_secrets_are_redacted(text: str, secret: str) -> None:
    cleaned = redact(text)
    assert secret not in cleaned
    assert "[redacted" in cleaned


def test_plain_text_is_left_alone() -> None:
    assert redact("user 0001 reconciled in 12 ms") == "user 0001 reconciled in 12 ms"


def test_one_json_event_per_line_with_the_error() -> None:
    formatter = JsonFormatter()
    try:
        raise ValueError("token=abc123secret")
    except ValueError:
        record = logging.LogRecord(
            "x", logging.ERROR, __file__, 1, "failed for %s", ("0001",), sys.exc_info()
        )
    line = formatter.format(record)
    assert "\n" not in line
    event = json.loads(line)
    assert event["level"] == "error"
    assert event["msg"] == "failed for 0001"
    assert "abc123secret" not in event["error"]
    assert event["ts"].endswith("Z")


async def test_every_response_carries_a_request_id(bridge: Bridge) -> None:
    response = await bridge.http.get("/healthz")
    generated = response.headers["x-request-id"]
    assert len(generated) == 16
    response = await bridge.http.get("/healthz", headers={"X-Request-Id": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    response = await bridge.http.get("/healthz", headers={"X-Request-Id": "bad id\\with junk"})
    assert response.headers["x-request-id"] != "bad id\\with junk"
