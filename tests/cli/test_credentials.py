"""``presence-bridge starface credentials``: import, set, list and delete, against a real Valkey."""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Any

import pytest
import redis

from service.cli import credentials as credentials_cli
from service.cli.arguments import add_credentials_arguments
from service.core import keys
from service.core.secretbox import SecretBox
from tests.conftest import SECRET_KEY

SECRET_A = "Geheim-Alpha-7c1f"
SECRET_B = 'pa,ss "quoted" wörd'


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
    add_credentials_arguments(parser)
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
    assert credentials_cli.run(_args("import", str(path))) == 0
    out = capsys.readouterr()
    assert "2 login(s)" in out.out
    assert SECRET_A not in out.out + out.err
    assert _stored(cli_env) == {"0001": SECRET_A, "0002": "x2"}


def test_cli_import_of_a_bad_file_stores_nothing_and_exits_2(
    cli_env: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "creds.csv"
    path.write_text(f"login,password\n0001,{SECRET_A}\n0002,\n", encoding="utf-8")
    assert credentials_cli.run(_args("import", str(path))) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "line 3: password is empty" in err
    assert SECRET_A not in err
    assert _stored(cli_env) == {}


def test_cli_import_of_a_missing_file_exits_2(
    cli_env: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert credentials_cli.run(_args("import", str(tmp_path / "nope.csv"))) == 2
    assert "cannot read" in capsys.readouterr().err


def test_cli_set_from_stdin_then_list_and_delete(
    cli_env: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(SECRET_A + "\n"))
    assert credentials_cli.run(_args("set", "0007", "--password-stdin")) == 0
    assert _stored(cli_env) == {"0007": SECRET_A}
    assert credentials_cli.run(_args("list")) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "0007"
    assert credentials_cli.run(_args("delete", "0007")) == 0
    assert credentials_cli.run(_args("delete", "0007")) == 2
    assert _stored(cli_env) == {}


def test_cli_set_with_getpass_asks_twice_and_refuses_a_mismatch(
    cli_env: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    answers = iter([SECRET_A, SECRET_A + "typo"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    assert credentials_cli.run(_args("set", "0007")) == 2
    err = capsys.readouterr().err
    assert "differ" in err
    assert SECRET_A not in err
    assert _stored(cli_env) == {}
    answers = iter([SECRET_B, SECRET_B])
    assert credentials_cli.run(_args("set", "0007")) == 0
    assert _stored(cli_env) == {"0007": SECRET_B}


def test_cli_set_refuses_empty_password(cli_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    assert credentials_cli.run(_args("set", "0007", "--password-stdin")) == 2
    assert _stored(cli_env) == {}


def test_cli_without_secret_key_exits_2(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("BRIDGE_SECRET_KEY", raising=False)
    monkeypatch.setenv("REDIS_URL", redis_url)
    assert credentials_cli.run(_args("list")) == 2
    assert "BRIDGE_SECRET_KEY" in capsys.readouterr().err


def test_cli_with_redis_down_exits_1_without_the_url(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from service.core.embedded import free_port

    url = f"redis://:hunter2-redis-pass@127.0.0.1:{free_port()}/0"
    monkeypatch.setenv("REDIS_URL", url)
    monkeypatch.setenv("BRIDGE_SECRET_KEY", SECRET_KEY)
    monkeypatch.setattr("sys.stdin", io.StringIO("pw\n"))
    assert credentials_cli.run(_args("set", "0001", "--password-stdin")) == 1
    err = capsys.readouterr().err
    assert "Redis" in err
    assert "hunter2" not in err
