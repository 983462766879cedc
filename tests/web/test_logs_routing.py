"""uvicorn's loggers and every traceback go through the project's JSON handler, sampled."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator

import pytest
import uvicorn
from starlette.applications import Starlette

from service.core import logs


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    logs.setup("INFO")
    stream = io.StringIO()
    handler = root.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    yield stream
    root.handlers[:], root.level = saved


def test_uvicorn_loggers_stay_json_after_a_uvicorn_config_is_built(json_lines: io.StringIO) -> None:
    uvicorn.Config(Starlette(), log_level="info")  # applies uvicorn's logging config, as runtime does
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        assert logging.getLogger(name).handlers == []
        assert logging.getLogger(name).propagate
    logging.getLogger("uvicorn.error").info("token=abc123 started")
    (line,) = json_lines.getvalue().splitlines()
    event = json.loads(line)
    assert event["logger"] == "uvicorn.error"
    assert "abc123" not in line


def test_one_traceback_per_kind_per_minute(json_lines: io.StringIO) -> None:
    log = logging.getLogger("uvicorn.error")
    for _ in range(50):
        try:
            raise ValueError("bad body")
        except ValueError:
            log.exception("Exception in ASGI application")
    try:
        raise KeyError("other kind")
    except KeyError:
        log.exception("Exception in ASGI application")
    events = [json.loads(line) for line in json_lines.getvalue().splitlines()]
    assert len(events) == 51
    traced = [e for e in events if "error" in e]
    assert [e["error"].splitlines()[-1] for e in traced] == ["ValueError: bad body", "KeyError: 'other kind'"]
    assert all("sampled" in e["msg"] for e in events if "error" not in e)


def test_the_sampler_lets_a_traceback_through_again_after_the_window() -> None:
    now = [0.0]
    sampler = logs.TracebackSampler(window=60, clock=lambda: now[0])

    def record() -> logging.LogRecord:
        try:
            raise RuntimeError("x")
        except RuntimeError:
            return logging.LogRecord("a", logging.ERROR, "f", 1, "m", None, sys.exc_info())

    first, second = record(), record()
    assert sampler.filter(first)
    assert first.exc_info
    assert sampler.filter(second)
    assert second.exc_info is None
    now[0] = 61.0
    third = record()
    assert sampler.filter(third)
    assert third.exc_info
