from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from service.core import keys
from service.core.secretbox import SecretBox
from service.starface import credentials
from service.starface.credentials import CredentialsFileError, CredentialStore, parse_csv
from service.starface.gateway import CredentialsUnreadable
from tests.conftest import SECRET_KEY

SECRET_A = "Geheim-Alpha-7c1f"
SECRET_B = 'pa,ss "quoted" wörd'


# -- CSV validation ---------------------------------------------------------------------------


def test_csv_with_header_and_rows_parses_including_quoted_commas() -> None:
    data = f'login,password\n0001,{SECRET_A}\n0002,"pa,ss ""quoted"" wörd"\n\n'.encode()
    assert parse_csv(data) == {"0001": SECRET_A, "0002": SECRET_B}


def test_csv_accepts_excel_bom_crlf_and_header_case() -> None:
    data = "\ufeffLogin , Password\r\n0001,x1\r\n".encode()
    assert parse_csv(data) == {"0001": "x1"}


def _problems(data: bytes) -> list[str]:
    with pytest.raises(CredentialsFileError) as caught:
        parse_csv(data)
    return [str(p) for p in caught.value.problems]


def test_missing_header_is_refused_without_echoing_the_row() -> None:
    problems = _problems(f"0001,{SECRET_A}\n".encode())
    assert problems == ["line 1: the first row must be the header login,password"]
    assert SECRET_A not in " ".join(problems)


def test_every_bad_row_is_named_by_line_and_no_password_is_echoed() -> None:
    data = (
        "login,password\n"
        f"0001,{SECRET_A}\n"  # line 2 fine
        f",{SECRET_A}-x\n"  # line 3 empty login
        "0003,\n"  # line 4 empty password
        f"0004,{SECRET_A}-y,extra\n"  # line 5 three fields
        f"0001,{SECRET_A}-z\n"  # line 6 repeats line 2
        f"00 5,{SECRET_A}-w\n"  # line 7 space in login
    ).encode()
    with pytest.raises(CredentialsFileError) as caught:
        parse_csv(data)
    problems = [str(p) for p in caught.value.problems]
    assert problems == [
        "line 3: login is empty",
        "line 4: password is empty",
        "line 5: expected 2 fields (login,password), found 3",
        "line 6: login repeats line 2",
        "line 7: login contains spaces or control characters",
    ]
    assert SECRET_A not in str(caught.value)


def test_header_only_and_empty_and_binary_files_are_refused() -> None:
    assert _problems(b"login,password\n") == ["line 1: no credentials after the header"]
    assert _problems(b"") == ["line 1: the header login,password is missing"]
    assert _problems(b"\xff\xfe\x00l") == ["line 0: file is not UTF-8 text"]


def test_unterminated_quote_is_refused_not_swallowing_the_next_rows() -> None:
    problems = _problems(b'login,password\n0001,"open quote\n0002,x\n')
    assert len(problems) == 1
    assert problems[0].startswith("line ")
    assert "malformed CSV" in problems[0]
    assert "open quote" not in problems[0]


def test_quoted_password_with_a_line_break_is_refused() -> None:
    assert _problems(b'login,password\n0001,"two\nlines"\n') == ["line 3: password contains a line break"]


# -- the store (real Valkey) ------------------------------------------------------------------


@pytest.fixture
def store(redis_client: aioredis.Redis) -> CredentialStore:
    return CredentialStore(redis_client, SecretBox(SECRET_KEY))


async def test_store_seals_at_rest_and_reads_back(
    store: CredentialStore, redis_client: aioredis.Redis
) -> None:
    await store.put_many({"0001": SECRET_A, "0002": SECRET_B})
    raw = await redis_client.hget(keys.STARFACE_CREDENTIALS, "0001")
    assert raw is not None
    assert SECRET_A.encode() not in raw
    assert await store.get("0001") == SECRET_A
    assert await store.get("0002") == SECRET_B
    assert await store.get("0003") is None
    assert await store.logins() == ["0001", "0002"]
    assert await store.delete("0002") is True
    assert await store.delete("0002") is False
    assert await store.logins() == ["0001"]


async def test_sealed_value_bound_to_its_login(store: CredentialStore, redis_client: aioredis.Redis) -> None:
    await store.put("0001", SECRET_A)
    sealed = await redis_client.hget(keys.STARFACE_CREDENTIALS, "0001")
    assert sealed is not None
    await redis_client.hset(keys.STARFACE_CREDENTIALS, "0002", sealed)  # copied to another user
    with pytest.raises(CredentialsUnreadable) as caught:
        await store.get("0002")
    assert caught.value.login == "0002"
    other_key = CredentialStore(redis_client, SecretBox("another-secret-key-0123456789abcdefghij"))
    with pytest.raises(CredentialsUnreadable):
        await other_key.get("0001")


async def test_storing_credentials_wakes_only_scheduled_sessions(
    store: CredentialStore, redis_client: aioredis.Redis
) -> None:
    far = 10**15
    await redis_client.zadd(keys.UCI_DUE, {"0001": far})
    await store.put_many({"0001": SECRET_A, "0009": SECRET_B})
    score = await redis_client.zscore(keys.UCI_DUE, "0001")
    assert score is not None
    assert score < far
    # A login that is not selected is not put on the schedule by storing its password.
    assert await redis_client.zscore(keys.UCI_DUE, "0009") is None


async def test_store_refuses_bad_login(store: CredentialStore) -> None:
    with pytest.raises(ValueError, match="spaces"):
        await store.put("00 1", SECRET_A)
    assert await store.logins() == []


# -- CLI --------------------------------------------------------------------------------------


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, redis_url: str) -> str:
    for name in ("REDIS_URL", "BRIDGE_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("BRIDGE_SECRET_KEY", SECRET_KEY)
    return redis_url


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="presence-bridge starface credentials")
    credentials.add_arguments(parser)
    args = parser.parse_args(list(argv))
    args.env_file = None
    return args


def _stored(redis_url: str) -> dict[str, str]:
    client = redis.Redis.from_url(redis_url)
    try:
        box = SecretBox(SECRET_KEY)
        raw: Any = client.hgetall(keys.STARFACE_CREDENTIALS)
        return {
            k.decode(): box.open(v, f"{keys.STARFACE_CREDENTIALS}/{k.decode()}").decode()
            for k, v in raw.items()
        }
    finally:
        client.close()


def test_cli_import_stores_all_rows(cli_env: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "creds.csv"
    path.write_text(f"login,password\n0001,{SECRET_A}\n0002,x2\n", encoding="utf-8")
    assert credentials.run(_args("import", str(path))) == 0
    out = capsys.readouterr()
    assert "2 login(s)" in out.out
    assert SECRET_A not in out.out + out.err
    assert _stored(cli_env) == {"0001": SECRET_A, "0002": "x2"}


def test_cli_import_of_a_bad_file_stores_nothing_and_exits_2(
    cli_env: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "creds.csv"
    path.write_text(f"login,password\n0001,{SECRET_A}\n0002,\n", encoding="utf-8")
    assert credentials.run(_args("import", str(path))) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "line 3: password is empty" in err
    assert SECRET_A not in err
    assert _stored(cli_env) == {}


def test_cli_import_of_a_missing_file_exits_2(
    cli_env: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert credentials.run(_args("import", str(tmp_path / "nope.csv"))) == 2
    assert "cannot read" in capsys.readouterr().err


def test_cli_set_from_stdin_then_list_and_delete(
    cli_env: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(SECRET_A + "\n"))
    assert credentials.run(_args("set", "0007", "--password-stdin")) == 0
    assert _stored(cli_env) == {"0007": SECRET_A}
    assert credentials.run(_args("list")) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "0007"
    assert credentials.run(_args("delete", "0007")) == 0
    assert credentials.run(_args("delete", "0007")) == 2
    assert _stored(cli_env) == {}


def test_cli_set_with_getpass_asks_twice_and_refuses_a_mismatch(
    cli_env: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    answers = iter([SECRET_A, SECRET_A + "typo"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    assert credentials.run(_args("set", "0007")) == 2
    err = capsys.readouterr().err
    assert "differ" in err
    assert SECRET_A not in err
    assert _stored(cli_env) == {}
    answers = iter([SECRET_B, SECRET_B])
    assert credentials.run(_args("set", "0007")) == 0
    assert _stored(cli_env) == {"0007": SECRET_B}


def test_cli_set_refuses_empty_password(cli_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    assert credentials.run(_args("set", "0007", "--password-stdin")) == 2
    assert _stored(cli_env) == {}


def test_cli_without_secret_key_exits_2(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("BRIDGE_SECRET_KEY", raising=False)
    monkeypatch.setenv("REDIS_URL", redis_url)
    assert credentials.run(_args("list")) == 2
    assert "BRIDGE_SECRET_KEY" in capsys.readouterr().err


def test_cli_with_redis_down_exits_2_without_the_url(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from service.core.embedded import free_port

    url = f"redis://:hunter2-redis-pass@127.0.0.1:{free_port()}/0"
    monkeypatch.setenv("REDIS_URL", url)
    monkeypatch.setenv("BRIDGE_SECRET_KEY", SECRET_KEY)
    monkeypatch.setattr("sys.stdin", io.StringIO("pw\n"))
    assert credentials.run(_args("set", "0001", "--password-stdin")) == 2
    err = capsys.readouterr().err
    assert "Redis" in err
    assert "hunter2" not in err
