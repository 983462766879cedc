"""Per-user STARFACE passwords: stored sealed in Redis, imported from CSV or set one by one.

UCI acts only on the logged-in user, so the bridge needs every selected user's password
(reference/starface.md §0, §2.6).  Passwords are sealed with ``SecretBox`` bound to the Redis key
and the login, are never logged, printed or put in an error, and a CSV file is validated whole
before anything is written, so a bad file never leaves half its rows stored.

CLI glue: ``presence-bridge starface credentials import FILE | set LOGIN [--password-stdin] |
list | delete LOGIN`` through ``add_arguments`` and ``run``.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import dataclasses
import getpass
import io
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from service.core import keys
from service.core.secretbox import SealError, SecretBox
from service.core.settings import Settings, SettingsError
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
            await pipe.execute()

    async def get(self, login: str) -> str | None:
        """The password of ``login``; ``None`` when none is stored.

        Raises ``CredentialsUnreadable`` when the stored value does not open (other secret key).
        """
        sealed = await self.redis.hget(keys.STARFACE_CREDENTIALS, login)
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


# -- CLI glue ---------------------------------------------------------------------------------


class CliError(Exception):
    """A one-line reason to exit with status 2."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Subcommands of ``starface credentials``."""
    sub = parser.add_subparsers(dest="credentials_command", required=True, metavar="COMMAND")
    imp = sub.add_parser("import", help="import login,password rows from a CSV file (all or nothing)")
    imp.add_argument("file", help="CSV file with the header login,password")
    one = sub.add_parser("set", help="set the password of one login (asked without echo)")
    one.add_argument("login", help="STARFACE login ID")
    one.add_argument(
        "--password-stdin", action="store_true", help="read the password from the first line of stdin"
    )
    sub.add_parser("list", help="list the login IDs that have stored credentials (never passwords)")
    rm = sub.add_parser("delete", help="delete the stored credentials of one login")
    rm.add_argument("login", help="STARFACE login ID")


def run(args: argparse.Namespace, *, redis_url: str | None = None) -> int:
    """Run one ``starface credentials`` command: 0 on success, 2 with a one-line error otherwise.

    ``redis_url`` overrides ``REDIS_URL`` (the CLI passes the embedded server's).
    """
    try:
        settings = _settings(args, redis_url)
        command = args.credentials_command
        if command == "import":
            passwords = _read_file(Path(args.file))
            count = asyncio.run(_store(settings, passwords))
            print(f"stored STARFACE credentials for {count} login(s)")
        elif command == "set":
            problem = login_problem(args.login)
            if problem is not None:
                raise CliError(problem)
            password = _read_password(args.login, from_stdin=args.password_stdin)
            asyncio.run(_store(settings, {args.login: password}))
            print(f"stored STARFACE credentials for login {args.login}")
        elif command == "list":
            for login in asyncio.run(_logins(settings)):
                print(login)
        elif command == "delete":
            if not asyncio.run(_delete(settings, args.login)):
                raise CliError(f"no credentials stored for login {args.login!r}")
            print(f"deleted STARFACE credentials for login {args.login}")
        else:
            raise CliError(f"unknown command {command!r}")
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except CredentialsFileError as exc:
        print(f"error: credentials file not imported, nothing stored: {exc}", file=sys.stderr)
        return 2
    except RedisError as exc:
        # The URL may hold a Redis password, so only the error type is shown.
        print(f"error: Redis (REDIS_URL) failed: {type(exc).__name__}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted, nothing stored", file=sys.stderr)
        return 2
    return 0


def _settings(args: argparse.Namespace, redis_url: str | None = None) -> Settings:
    env_file = getattr(args, "env_file", ".env")
    try:
        settings = Settings.from_env(env_file=env_file, require=())
    except SettingsError as exc:
        raise CliError("; ".join(exc.problems)) from None
    if redis_url:
        settings = dataclasses.replace(settings, redis_url=redis_url)
    if not settings.secret_key:
        raise CliError("BRIDGE_SECRET_KEY is missing: it encrypts the stored credentials")
    if not settings.redis_url:
        raise CliError("REDIS_URL is missing: credentials are stored in the bridge's Redis")
    return settings


def _read_file(path: Path) -> dict[str, str]:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise CliError(f"cannot read {str(path)!r}: {exc.strerror or type(exc).__name__}") from None
    return parse_csv(data)


def _read_password(login: str, *, from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        try:
            password = getpass.getpass(f"STARFACE password for login {login}: ")
            repeated = getpass.getpass("repeat the password: ")
        except EOFError:
            raise CliError("no password given") from None
        if password != repeated:
            raise CliError("the two passwords differ")
    if not password:
        raise CliError("the password is empty")
    return password


async def _with_store(settings: Settings) -> tuple[aioredis.Redis, CredentialStore]:
    redis = aioredis.Redis.from_url(str(settings.redis_url), socket_timeout=10, socket_connect_timeout=5)
    return redis, CredentialStore(redis, SecretBox(settings.secret_key))


async def _store(settings: Settings, passwords: dict[str, str]) -> int:
    redis, store = await _with_store(settings)
    try:
        await store.put_many(passwords)
    finally:
        await redis.aclose()
    return len(passwords)


async def _logins(settings: Settings) -> list[str]:
    redis, store = await _with_store(settings)
    try:
        return await store.logins()
    finally:
        await redis.aclose()


async def _delete(settings: Settings, login: str) -> bool:
    redis, store = await _with_store(settings)
    try:
        return await store.delete(login)
    finally:
        await redis.aclose()
