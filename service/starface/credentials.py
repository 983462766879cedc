"""Per-user STARFACE passwords: stored sealed in Redis, imported from CSV or set one by one.

UCI acts only on the logged-in user, so the bridge needs every selected user's password
(docs/protocols.md, "UCI").  Passwords are sealed with ``SecretBox`` bound to the Redis key
and the login, are never logged, printed or put in an error, and a CSV file is validated whole
before anything is written, so a bad file never leaves half its rows stored.

The command line for them is ``service.cli.credentials``.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Mapping
from dataclasses import dataclass

import redis.asyncio as aioredis

from service.core import keys
from service.core.secretbox import SealError, SecretBox
from service.starface.gateway import CredentialsUnreadable

# A credentials file is a few hundred rows; anything far larger is a wrong file, not a bigger PBX.
MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_LOGIN_LENGTH = 64


def _context(login: str) -> str:
    return f"{keys.STARFACE_CREDENTIALS}/{login}"


def login_problem(login: str) -> str | None:
    """Why ``login`` cannot be a STARFACE login ID, or ``None``; never echoes the value."""
    if not login:
        return "login is empty"
    if len(login) > MAX_LOGIN_LENGTH:
        return f"login is longer than {MAX_LOGIN_LENGTH} characters"
    if any(ch.isspace() or not ch.isprintable() for ch in login):
        return "login contains spaces or control characters"
    return None


class CredentialStore:
    def __init__(self, redis: aioredis.Redis, box: SecretBox) -> None:
        self.redis = redis
        self.box = box

    async def put(self, login: str, password: str) -> None:
        await self.put_many({login: password})

    async def put_many(self, passwords: Mapping[str, str]) -> None:
        """Store all or nothing (one MULTI), and make those users' UCI sessions due now.

        Waking the sessions lets a corrected password take effect at once instead of after the
        back-off that follows a refused login.
        """
        if not passwords:
            return
        for login in passwords:
            problem = login_problem(login)
            if problem is not None:
                raise ValueError(problem)
        sealed = {
            login: self.box.seal(pw.encode("utf-8"), _context(login)) for login, pw in passwords.items()
        }
        now_ms = int(time.time() * 1000)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.STARFACE_CREDENTIALS, mapping=sealed)  # type: ignore[arg-type]
            pipe.zadd(keys.UCI_DUE, dict.fromkeys(passwords, now_ms), xx=True)
            # A new password deserves a try at once, whatever the old one's refusals were.
            pipe.delete(*(keys.uci_refused_logins(login) for login in passwords))
            await pipe.execute()

    async def get(self, login: str) -> str | None:
        """The password of ``login``; ``None`` when none is stored.

        Raises ``CredentialsUnreadable`` when the stored value does not open (other secret key).
        """
        return self.open(login, await self.redis.hget(keys.STARFACE_CREDENTIALS, login))

    def open(self, login: str, sealed: bytes | str | None) -> str | None:
        """The password in ``sealed`` (the stored value of ``login``, read by the caller)."""
        if sealed is None:
            return None
        raw = sealed if isinstance(sealed, bytes) else str(sealed).encode()
        try:
            return self.box.open(raw, _context(login)).decode("utf-8")
        except SealError:
            raise CredentialsUnreadable(login) from None

    async def delete(self, login: str) -> bool:
        return bool(await self.redis.hdel(keys.STARFACE_CREDENTIALS, login))

    async def logins(self) -> list[str]:
        raw = await self.redis.hkeys(keys.STARFACE_CREDENTIALS)
        return sorted(k.decode() if isinstance(k, bytes) else str(k) for k in raw)


# -- CSV --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CsvProblem:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


class CredentialsFileError(Exception):
    """The file cannot be imported; ``problems`` names every bad line, never a value in it."""

    def __init__(self, problems: list[CsvProblem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


HEADER = ("login", "password")


def parse_csv(data: bytes) -> dict[str, str]:
    """Validate a whole ``login,password`` file and return its rows, or raise naming every problem.

    Messages carry line numbers and rules, never a cell: a login column holding a password by
    mistake must not end up on a terminal either.
    """
    if len(data) > MAX_FILE_BYTES:
        raise CredentialsFileError([CsvProblem(0, f"file is larger than {MAX_FILE_BYTES} bytes")])
    try:
        text = data.decode("utf-8-sig")  # Excel writes a byte-order mark
    except UnicodeDecodeError:
        raise CredentialsFileError([CsvProblem(0, "file is not UTF-8 text")]) from None
    # strict: an unterminated quote is an error, not a password that swallows the next rows.
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    problems: list[CsvProblem] = []
    rows: dict[str, str] = {}
    first_line: dict[str, int] = {}
    header_seen = False
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            # csv.Error texts are fixed library messages that quote no field content.
            problems.append(CsvProblem(reader.line_num, f"malformed CSV ({exc})"))
            break
        line = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if not header_seen:
            header_seen = True
            if tuple(cell.strip().lower() for cell in row) != HEADER:
                problems.append(CsvProblem(line, "the first row must be the header login,password"))
                break
            continue
        if len(row) != 2:
            problems.append(CsvProblem(line, f"expected 2 fields (login,password), found {len(row)}"))
            continue
        login, password = row[0].strip(), row[1]
        problem = login_problem(login)
        if problem is not None:
            problems.append(CsvProblem(line, problem))
            continue
        if not password:
            problems.append(CsvProblem(line, "password is empty"))
            continue
        if "\n" in password or "\r" in password:
            problems.append(CsvProblem(line, "password contains a line break"))
            continue
        if login in first_line:
            problems.append(CsvProblem(line, f"login repeats line {first_line[login]}"))
            continue
        first_line[login] = line
        rows[login] = password
    if not header_seen and not problems:
        problems.append(CsvProblem(1, "the header login,password is missing"))
    if problems:
        raise CredentialsFileError(problems)
    if not rows:
        raise CredentialsFileError([CsvProblem(reader.line_num, "no credentials after the header")])
    return rows
