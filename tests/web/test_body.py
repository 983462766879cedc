"""The nesting bound on request bodies: its quick path must judge exactly as a plain count."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.web.body import MAX_JSON_DEPTH, BadJson, json_too_deep, loads_bounded

# The reference: strings removed by the textbook pattern, then every bracket counted in turn.
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


def counted(raw: bytes, limit: int) -> bool:
    depth = 0
    for byte in _STRING.sub(b"", raw):
        if byte in b"[{":
            depth += 1
        elif byte in b"]}":
            depth -= 1
        if depth > limit:
            return True
    return False


@given(st.binary(max_size=120).map(lambda b: bytes(b'[]{}"\\a,'[x % 8] for x in b)), st.integers(0, 12))
def test_the_quick_path_judges_any_bytes_as_the_plain_count(raw: bytes, limit: int) -> None:
    assert json_too_deep(raw, limit) == counted(raw, limit)


@pytest.mark.parametrize("depth", [0, 1, 7, 8, 9, MAX_JSON_DEPTH, MAX_JSON_DEPTH + 1, 100_000])
def test_balanced_nesting_is_judged_exactly_at_every_depth(depth: int) -> None:
    raw = b"[" * depth + b"]" * depth
    assert json_too_deep(raw) is (depth > MAX_JSON_DEPTH)
    assert json_too_deep(b'{"a":' * depth + b"1" + b"}" * depth) is (depth > MAX_JSON_DEPTH)


def test_brackets_inside_strings_and_escapes_do_not_count() -> None:
    inner = json.dumps("[" * 200 + '\\"{' * 50).encode()
    assert not json_too_deep(b'{"value":[' + inner + b"]}")
    assert loads_bounded(b'{"value":[' + inner + b"]}")["value"][0].startswith("[[[")
    with pytest.raises(BadJson, match="nested too deep"):
        loads_bounded(b"[" * 65 + b"]" * 65)
