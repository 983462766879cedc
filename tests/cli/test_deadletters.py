"""``presence-bridge dead-letters`` through a real subprocess against a real Valkey."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import redis

from service.core import keys
from service.core.storage import decoded
from tests.cli.processes import clean_env, describe, run_cli


def _dead(redis_url: str, *reasons: str) -> list[str]:
    client = redis.Redis.from_url(redis_url)
    try:
        return [
            decoded(
                client.xadd(
                    keys.DEAD_LETTER_STREAM,
                    {
                        "stream": keys.presence_stream(0),
                        "entry_id": "1-0",
                        "reason": reason,
                        "deliveries": "5",
                        "failed_at": "1700000000",
                        "fields": json.dumps({"change": "{not json", "secret": "user data"}),
                    },
                )
            )
            for reason in reasons
        ]
    finally:
        client.close()


def test_list_replay_and_purge(redis_url: str, tmp_path: Path) -> None:
    env = clean_env(REDIS_URL=redis_url)
    first, second, third = _dead(redis_url, "unreadable stream entry", "boom", "bang")
    listed = run_cli(["dead-letters", "list"], env, tmp_path)
    assert listed.returncode == 0, describe(listed)
    assert listed.stdout.splitlines()[0] == "3 dead letter(s), newest 3:"
    assert first in listed.stdout
    assert "unreadable stream entry" in listed.stdout
    assert "5x" in listed.stdout
    assert "user data" not in listed.stdout  # the entry's data is never printed
    as_json = json.loads(run_cli(["dead-letters", "list", "--json"], env, tmp_path).stdout)
    assert as_json["total"] == 3
    assert [d["id"] for d in as_json["dead_letters"]] == [third, second, first]

    replayed = run_cli(["dead-letters", "replay", first], env, tmp_path)
    assert replayed.returncode == 0, describe(replayed)
    client = redis.Redis.from_url(redis_url)
    try:
        entries: Any = client.xrange(keys.presence_stream(0))
        [(_, fields)] = entries
        assert fields[b"change"] == b"{not json"
        assert fields[b"dead_letter_deliveries"] == b"5"
        purged = run_cli(["dead-letters", "purge", "--all"], env, tmp_path)
        assert purged.returncode == 0, describe(purged)
        assert purged.stdout == "purge: 2 dead letter(s)\n"
        assert client.xlen(keys.DEAD_LETTER_STREAM) == 0
    finally:
        client.close()


def test_unknown_ids_and_bad_usage_exit_2_with_one_line(redis_url: str, tmp_path: Path) -> None:
    env = clean_env(REDIS_URL=redis_url)
    [kept] = _dead(redis_url, "boom")
    unknown = run_cli(["dead-letters", "purge", "1-1", kept], env, tmp_path)
    assert unknown.returncode == 2, describe(unknown)
    assert unknown.stderr == "presence-bridge: no dead letter with id 1-1 (see `dead-letters list`)\n"
    for argv in (["dead-letters", "replay"], ["dead-letters", "replay", "--all", kept]):
        usage = run_cli(argv, env, tmp_path)
        assert usage.returncode == 2, describe(usage)
        assert usage.stderr.startswith("presence-bridge: dead-letters replay: name dead-letter ids")
        assert len(usage.stderr.splitlines()) == 1
