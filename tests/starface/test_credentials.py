from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from service.core import keys
from service.core.secretbox import SecretBox
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
