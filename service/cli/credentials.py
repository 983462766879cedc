"""``presence-bridge starface credentials``: import, set, list and delete per-user STARFACE passwords."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from pathlib import Path

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from service.cli.policy import CommandFailed, UsageError, exit_code
from service.core import storage
from service.core.secretbox import SecretBox
from service.core.settings import Settings, SettingsError
from service.starface.credentials import (
    MAX_FILE_BYTES,
    CredentialsFileError,
    CredentialStore,
    login_problem,
    parse_csv,
)


class CliError(UsageError):
    """A one-line reason to exit with status 2."""


def run(args: argparse.Namespace, *, redis_url: str | None = None) -> int:
    """Run one ``starface credentials`` command; exit codes and messages as ``service.cli.policy``.

    ``redis_url`` overrides ``REDIS_URL`` (the CLI passes the embedded server's).
    """
    try:
        return _execute(args, redis_url)
    except (UsageError, CommandFailed) as exc:
        return exit_code(exc)


def _execute(args: argparse.Namespace, redis_url: str | None) -> int:
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
    except CredentialsFileError as exc:
        raise UsageError(f"credentials file not imported, nothing stored: {exc}") from None
    except RedisError as exc:
        # The URL may hold a Redis password, so only the error type is shown.
        raise CommandFailed(f"Redis (REDIS_URL) failed: {type(exc).__name__}") from None
    except KeyboardInterrupt:
        raise CommandFailed("interrupted, nothing stored") from None
    return 0


def _settings(args: argparse.Namespace, redis_url: str | None = None) -> Settings:
    env_file = getattr(args, "env_file", ".env")
    try:
        settings = Settings.from_env(env_file=env_file, require=())
    except SettingsError as exc:
        raise CliError("; ".join(exc.problems)) from None
    if redis_url:
        settings = settings.model_copy(update={"redis_url": redis_url})
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
    redis = storage.connect(str(settings.redis_url), socket_timeout=10, socket_connect_timeout=5)
    return redis, CredentialStore(redis, SecretBox.from_settings(settings))


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
