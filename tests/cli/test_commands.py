"""Every ``presence-bridge`` command through a real subprocess, including its error paths.

Each command runs as ``python -m service ...`` in ``tmp_path`` (no stray ``.env``) with an
environment stripped of every bridge setting, so only what a test sets is configured.  Exit codes:
0 ok, 1 runtime failure or ``status`` unhealthy, 2 usage or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
import redis.asyncio as aioredis

from service.bridge.decisions import DecisionLog, DecisionRecord
from service.bridge.identity import IdentityStore
from service.cli.main import build_parser, sandbox_parser
from service.core import keys
from service.core.embedded import free_port
from service.core.settings import CORE, FIELDS, required_groups
from service.core.tls import client_context
from service.starface.directory import DirectoryStore, Selection
from service.starface.rest import StarfaceUser
from tests.cli.processes import CliProcess, describe, run_cli, run_jobs, run_many
from tests.conftest import SECRET_KEY
from tests.ops.conftest import mark_running

PASSWORD_1 = "Zebra-Passw0rd-41"
PASSWORD_2 = "Otter;Pass,word-42"
STDIN_PASSWORD = "Stdin-Passw0rd-43"
PASSWORDS = (PASSWORD_1, PASSWORD_2, STDIN_PASSWORD)
GOOD_CSV = f'login,password\n0001,{PASSWORD_1}\n0002,"{PASSWORD_2}"\n'


def assert_no_traceback(*texts: str) -> None:
    for text in texts:
        assert "Traceback" not in text, text


def assert_no_password(*texts: str) -> None:
    for text in texts:
        for password in PASSWORDS:
            assert password not in text


def missing_keys(groups: list[str]) -> list[str]:
    return [spec.env for spec in FIELDS if spec.group is not None and spec.group in groups]


# -- help and usage ---------------------------------------------------------------------------


def command_tree(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every (sub)command of the real parser with its path, the top level first."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                if path == ("sandbox",):  # the top level holds only its name; the sandbox has the rest
                    child = sandbox_parser(name)[0]
                yield from command_tree(child, (*path, name))


def subcommands(parser: argparse.ArgumentParser) -> list[str]:
    return [
        name
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
        for name in action.choices
    ]


def option_names(parser: argparse.ArgumentParser) -> list[str]:
    names = []
    for action in parser._actions:
        if action.option_strings:
            names.append(max(action.option_strings, key=len))
        elif not isinstance(action, argparse._SubParsersAction):
            names.append(action.metavar if isinstance(action.metavar, str) else action.dest)
    return names


COMMAND_TREE = list(command_tree(build_parser()))
TOP_LEVEL = (
    "serve",
    "demo",
    "sandbox",
    "login",
    "renew",
    "subscriptions",
    "health",
    "status",
    "explain",
    "dead-letters",
    "rotate",
    "mapping",
    "console",
    "starface",
)


def test_the_command_tree_is_complete() -> None:
    """The parametrized help checks below cover these paths (and whatever is added later)."""
    paths = [path for path, _ in COMMAND_TREE]
    assert subcommands(COMMAND_TREE[0][1]) == list(TOP_LEVEL)
    for expected in (
        ("sandbox", "graph"),
        ("sandbox", "starface"),
        ("mapping", "check"),
        ("mapping", "preview"),
        ("mapping", "export"),
        ("console", "hash-password"),
        ("starface", "credentials"),
        ("starface", "credentials", "import"),
        ("starface", "credentials", "set"),
        ("starface", "credentials", "list"),
        ("starface", "credentials", "delete"),
    ):
        assert expected in paths


@pytest.mark.parametrize("top", ["", *TOP_LEVEL], ids=["presence-bridge", *TOP_LEVEL])
def test_help_exits_0_and_mentions_every_option(tmp_path: Path, bare_env: dict[str, str], top: str) -> None:
    """``--help`` of the top level, or of one command and each of its subcommands (side by side)."""
    tree = [(path, parser) for path, parser in COMMAND_TREE if (path[:1] == (top,) if top else not path)]
    assert tree
    results = run_many([[*path, "--help"] for path, _ in tree], bare_env, tmp_path)
    for (path, parser), result in zip(tree, results, strict=True):
        assert result.returncode == 0, describe(result)
        assert result.stderr == "", describe(result)
        assert result.stdout.startswith(" ".join(("usage: presence-bridge", *path))), describe(result)
        for name in [*option_names(parser), *subcommands(parser)]:
            assert name in result.stdout, f"{' '.join(path)} --help does not mention {name}"
    if not top:
        text = " ".join(results[0].stdout.split())
        assert "Exit codes: 0 ok, 1 failure, 2 bad usage or configuration" in text


def test_no_command_or_a_wrong_one_is_a_usage_error(tmp_path: Path, bare_env: dict[str, str]) -> None:
    none, bogus, mapping = run_many([[], ["bogus", "--json"], ["mapping"]], bare_env, tmp_path)
    for result in (none, bogus, mapping):
        assert result.returncode == 2, describe(result)
        assert result.stdout == ""
        assert result.stderr.startswith("usage: presence-bridge")
        assert_no_traceback(result.stderr)
    assert "presence-bridge: error: the following arguments are required: COMMAND" in none.stderr
    assert "invalid choice: 'bogus'" in bogus.stderr
    assert "usage: presence-bridge mapping" in mapping.stderr
    assert "required: ACTION" in mapping.stderr


# -- serve ------------------------------------------------------------------------------------


def test_serve_refuses_a_poll_interval_graph_cannot_carry(tmp_path: Path, core_env: dict[str, str]) -> None:
    env = {**core_env, "PRESENCE_SOURCE": "poll", "POLL_SECONDS": "0.5", "POLL_MAX_USERS": "30000"}
    [result] = run_jobs([(["serve", "--role", "web"], env)], tmp_path)
    assert result.returncode == 2, describe(result)
    assert result.stdout == ""
    assert_no_traceback(result.stderr)
    assert "POLL_SECONDS (0.5) is too short for POLL_MAX_USERS (30000)" in result.stderr
    assert "set POLL_SECONDS to at least 1.41" in result.stderr


def test_serve_configuration_errors(
    tmp_path: Path, bare_env: dict[str, str], core_env: dict[str, str]
) -> None:
    invalid = {
        **bare_env,
        "PUBLIC_BASE_URL": "http://bridge.test",
        "BRIDGE_SECRET_KEY": "short-key",
        "LOG_LEVEL": "LOUD",
    }
    (tmp_path / "cert.pem").write_text("not a certificate")
    every, web, tls_half, tls_bad = run_jobs(
        [
            (["serve"], bare_env),
            (["serve", "--role", "web"], invalid),
            (["serve", "--role", "web", "--tls-cert", "cert.pem"], core_env),
            (["serve", "--role", "web", "--tls-cert", "cert.pem", "--tls-key", "cert.pem"], core_env),
        ],
        tmp_path,
    )
    for result in (every, web, tls_half, tls_bad):
        assert result.returncode == 2, describe(result)
        assert result.stdout == ""
        assert_no_traceback(result.stderr)
    wanted = missing_keys(required_groups("all"))
    assert "AZURE_CLIENT_SECRET" in wanted
    assert "STARFACE_ADMIN_PASSWORD" in wanted
    assert f"presence-bridge: configuration has {len(wanted)} problem(s)" in every.stderr
    for key in wanted:
        assert f"  - {key} is missing" in every.stderr
    # --role web needs the core settings only; every bad value and missing key is named at once.
    assert web.stderr.splitlines() == [
        "presence-bridge: configuration has 5 problem(s):",
        "  - PUBLIC_BASE_URL must be an https:// URL",
        "  - BRIDGE_SECRET_KEY must be at least 32 characters; generate one with "
        "python -c 'import secrets; print(secrets.token_urlsafe(32))'",
        "  - AZURE_TENANT_ID is missing: Entra directory (tenant) id, a GUID",
        "  - AZURE_CLIENT_ID is missing: Application (client) id of the app registration",
        "  - LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR",
    ]
    assert tls_half.stderr == "presence-bridge: --tls-cert and --tls-key go together\n"
    assert tls_bad.stderr.startswith("presence-bridge: cannot use --tls-cert/--tls-key: ")
    assert len(tls_bad.stderr.splitlines()) == 1
    assert not (tmp_path / "data").exists()  # no embedded Valkey was started for a bad configuration


def _wait_healthy(process: CliProcess, base: str) -> None:
    with httpx.Client(trust_env=False, timeout=1.0) as http:

        def answers() -> bool:
            try:
                return http.get(f"{base}/healthz").status_code == 200
            except httpx.TransportError:
                return False

        process.poll_until(answers, timeout=10, what="/healthz answering 200")


def test_serve_web_role_answers_and_stops_on_sigterm(
    tmp_path: Path, redis_env: dict[str, str], data_dir: Path
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with CliProcess(["serve", "--role", "web", "--port", str(port)], redis_env, tmp_path) as process:
        _wait_healthy(process, base)
        with httpx.Client(trust_env=False, timeout=5.0) as http:
            health = http.get(f"{base}/healthz")
            assert health.json() == {"status": "ok"}
            echo = http.post(f"{base}/graph/notifications", params={"validationToken": "x"})
            assert echo.status_code == 200
            assert echo.text == "x"
            assert echo.headers["content-type"].startswith("text/plain")
            assert http.post(f"{base}/graph/notifications", content=b"{}").status_code != 200
        started = time.monotonic()
        assert process.stop(signal.SIGTERM, timeout=5) == 0, process.output()
        assert time.monotonic() - started < 5
    assert "one machine only" not in process.stderr  # REDIS_URL given: no embedded server
    assert not (data_dir / "valkey").exists()
    assert_no_traceback(process.stdout, process.stderr)


def test_serve_on_a_port_in_use_fails_in_one_line(tmp_path: Path, redis_env: dict[str, str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(["serve", "--role", "web", "--port", str(port)], redis_env, tmp_path)
    assert result.returncode == 1, describe(result)
    assert_no_traceback(result.stderr)


def test_serve_without_redis_url_runs_the_embedded_valkey(
    tmp_path: Path, core_env: dict[str, str], data_dir: Path
) -> None:
    port_file = data_dir / "valkey" / "port"
    port = free_port()
    (tmp_path / "creds.csv").write_text(GOOD_CSV)
    with CliProcess(["serve", "--role", "web", "--port", str(port)], core_env, tmp_path) as process:
        process.wait_for("one machine only", stream="stderr")
        _wait_healthy(process, f"http://127.0.0.1:{port}")
        assert port_file.is_file()
        valkey_port = int(port_file.read_text())
        # Another command without REDIS_URL finds the running server through the port file.
        imported = run_cli(["starface", "credentials", "import", "creds.csv"], core_env, tmp_path)
        assert imported.returncode == 0, describe(imported)
        client = redis.Redis(port=valkey_port)
        try:
            assert sorted(client.hkeys(keys.STARFACE_CREDENTIALS)) == [b"0001", b"0002"]
        finally:
            client.close()
        assert port_file.read_text() == str(valkey_port)  # the short-lived command left it alone
        assert process.stop(signal.SIGTERM, timeout=5) == 0, process.output()
    assert not port_file.exists()
    assert_no_traceback(process.stderr)
    assert_no_password(process.stdout, process.stderr, imported.stdout, imported.stderr)


# -- mapping ----------------------------------------------------------------------------------


def test_mapping_check(tmp_path: Path, bare_env: dict[str, str]) -> None:
    (tmp_path / "good.toml").write_text(
        'base = "en"\n[rows]\n"Busy/InAMeeting" = { dnd = true, text = "Meeting!" }\n'
    )
    (tmp_path / "broken.toml").write_text(
        'base = "de"\ncolour = "red"\n[rows]\n"Bussy" = { dnd = true, text = "x" }\n'
        '"Away" = { dnd = "no", text = "x" }\n'
    )
    builtin, good, broken, missing = run_many(
        [
            ["mapping", "check", "--language", "en"],
            ["mapping", "check", "good.toml"],
            ["mapping", "check", "broken.toml"],
            ["mapping", "check", "absent.toml"],
        ],
        bare_env,
        tmp_path,
    )
    for result in (builtin, good):
        assert result.returncode == 0, describe(result)
        assert result.stderr == ""
        assert "Do not disturb" in result.stdout
    assert "Meeting!" not in builtin.stdout
    assert "Meeting!" in good.stdout
    assert broken.returncode == 2, describe(broken)
    assert broken.stdout == ""
    assert broken.stderr.splitlines() == [
        "broken.toml: 3 problems:",
        "  - unknown key colour",
        "  - unknown key rows.\"Bussy\": unknown availability 'Bussy' (did you mean 'Busy'?)",
        '  - rows."Away".dnd must be true or false',
    ]
    assert missing.returncode == 2, describe(missing)
    assert missing.stdout == ""
    assert missing.stderr == "absent.toml: file not found\n"


def test_mapping_preview(tmp_path: Path, redis_env: dict[str, str]) -> None:
    (tmp_path / "broken.toml").write_text("[rows\n")
    nobody, broken = run_many(
        [["mapping", "preview"], ["mapping", "preview", "broken.toml"]], redis_env, tmp_path
    )
    assert nobody.returncode == 0, describe(nobody)
    assert nobody.stdout == "no bridged users yet (the scheduler links STARFACE logins to Teams users)\n"
    assert broken.returncode == 2, describe(broken)
    assert broken.stdout == ""
    assert broken.stderr.startswith("broken.toml: invalid TOML")
    assert_no_traceback(broken.stderr)
    # (A preview with a linked user runs in test_explain.)


# -- STARFACE credentials ---------------------------------------------------------------------


async def test_credentials_import_set_list_delete(
    tmp_path: Path, redis_env: dict[str, str], redis_client: aioredis.Redis
) -> None:
    (tmp_path / "creds.csv").write_text(GOOD_CSV)
    imported = run_cli(["starface", "credentials", "import", "creds.csv"], redis_env, tmp_path)
    assert imported.returncode == 0, describe(imported)
    assert imported.stdout == "stored STARFACE credentials for 2 login(s)\n"
    stored = await redis_client.hgetall(keys.STARFACE_CREDENTIALS)
    assert sorted(stored) == [b"0001", b"0002"]
    assert not any(p.encode() in value for value in stored.values() for p in PASSWORDS)  # sealed

    set_one, deleted, not_there = run_jobs(
        [
            (["starface", "credentials", "set", "0003", "--password-stdin"], redis_env),
            (["starface", "credentials", "delete", "0002"], redis_env),
            (["starface", "credentials", "delete", "0009"], redis_env),
        ],
        tmp_path,
        inputs=[f"{STDIN_PASSWORD}\n", None, None],
    )
    assert set_one.returncode == 0, describe(set_one)
    assert set_one.stdout == "stored STARFACE credentials for login 0003\n"
    assert deleted.returncode == 0, describe(deleted)
    assert deleted.stdout == "deleted STARFACE credentials for login 0002\n"
    assert not_there.returncode == 2, describe(not_there)
    assert not_there.stderr == "presence-bridge: no credentials stored for login '0009'\n"

    listed = run_cli(["starface", "credentials", "list"], redis_env, tmp_path)
    assert listed.returncode == 0, describe(listed)
    assert listed.stdout == "0001\n0003\n"
    assert sorted(await redis_client.hkeys(keys.STARFACE_CREDENTIALS)) == [b"0001", b"0003"]
    for result in (imported, set_one, deleted, not_there, listed):
        assert_no_traceback(result.stdout, result.stderr)
        assert_no_password(result.stdout, result.stderr)


async def test_credentials_errors_store_nothing(
    tmp_path: Path, redis_env: dict[str, str], redis_client: aioredis.Redis
) -> None:
    # A good row before the bad ones: all or nothing.
    (tmp_path / "bad.csv").write_text(f'login,password\n0001,{PASSWORD_1}\n0002,\n0001,"{PASSWORD_2}"\n')
    (tmp_path / "good.csv").write_text(GOOD_CSV)
    no_key = {k: v for k, v in redis_env.items() if k != "BRIDGE_SECRET_KEY"}
    bad, absent, keyless = run_jobs(
        [
            (["starface", "credentials", "import", "bad.csv"], redis_env),
            (["starface", "credentials", "import", "absent.csv"], redis_env),
            (["starface", "credentials", "import", "good.csv"], no_key),
        ],
        tmp_path,
    )
    assert bad.returncode == 2, describe(bad)
    assert bad.stderr == (
        "presence-bridge: credentials file not imported, nothing stored: "
        "line 3: password is empty; line 4: login repeats line 2\n"
    )
    assert absent.returncode == 2, describe(absent)
    assert absent.stderr == "presence-bridge: cannot read 'absent.csv': No such file or directory\n"
    assert keyless.returncode == 2, describe(keyless)
    assert (
        keyless.stderr
        == "presence-bridge: BRIDGE_SECRET_KEY is missing: it encrypts the stored credentials\n"
    )
    for result in (bad, absent, keyless):
        assert result.stdout == ""
        assert_no_traceback(result.stderr)
        assert_no_password(result.stderr)
    assert await redis_client.exists(keys.STARFACE_CREDENTIALS) == 0


def test_credentials_without_redis_url_use_the_embedded_valkey_durably(
    tmp_path: Path, bare_env: dict[str, str], data_dir: Path
) -> None:
    env = {**bare_env, "BRIDGE_SECRET_KEY": SECRET_KEY}
    (tmp_path / "creds.csv").write_text(GOOD_CSV)
    imported = run_cli(["starface", "credentials", "import", "creds.csv"], env, tmp_path)
    assert imported.returncode == 0, describe(imported)
    assert imported.stdout == "stored STARFACE credentials for 2 login(s)\n"
    valkey_dir = data_dir / "valkey"
    assert (valkey_dir / "appendonlydir").is_dir()
    assert not (valkey_dir / "port").exists()  # the temporary server is gone again
    # A second temporary server on the same append-only file still has them.
    listed = run_cli(["starface", "credentials", "list"], env, tmp_path)
    assert listed.returncode == 0, describe(listed)
    assert listed.stdout == "0001\n0002\n"
    assert_no_password(imported.stdout, imported.stderr, listed.stdout, listed.stderr)


# -- status -----------------------------------------------------------------------------------


def test_status_exit_code_reflects_health(tmp_path: Path, redis_env: dict[str, str], redis_url: str) -> None:
    empty = run_cli(["status"], redis_env, tmp_path)
    assert empty.returncode == 1, describe(empty)
    for problem in (
        "  - no worker is alive",
        "  - no scheduler holds the lease",
        "  - the STARFACE directory was never read",
        "  - no service account can hold a subscription",
    ):
        assert problem in empty.stdout, empty.stdout
    redis_env = {**redis_env, "GRAPH_SERVICE_ACCOUNTS": "sync@example.com"}
    asyncio.run(_mark_running(redis_url))
    text, as_json = run_many([["status"], ["status", "--json"]], redis_env, tmp_path)
    assert text.returncode == 0, describe(text)
    assert text.stderr == ""
    assert text.stdout.splitlines()[-1] == "HEALTHY"
    for section in (
        "  sync@example.com: no subscription",
        "Queues",
        "  presence: 0 entries, 0 not yet read, 0 in work",
        "  dead letters: 0",
        "STARFACE sessions: 0 up, 0 down",
        "Workers alive: 1; scheduler lease: host:1:abc",
    ):
        assert section in text.stdout.splitlines(), text.stdout
    assert as_json.returncode == 0, describe(as_json)
    report = json.loads(as_json.stdout)
    assert report["dead_letters"] == 0
    assert set(report["streams"]) == {"presence", "call events", "lifecycle"}
    assert report["failing_users"] == []

    client = redis.Redis.from_url(redis_url)
    try:
        client.xadd(keys.DEAD_LETTER_STREAM, {"stream": "presence", "reason": "boom", "deliveries": "5"})
    finally:
        client.close()
    unhealthy = run_cli(["status"], redis_env, tmp_path)
    assert unhealthy.returncode == 1, describe(unhealthy)
    assert "  dead letters: 1" in unhealthy.stdout.splitlines()
    assert "    presence: boom after 5 tries" in unhealthy.stdout.splitlines()


async def _mark_running(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        await mark_running(client)
    finally:
        await client.aclose()


def test_status_where_there_is_no_bridge_says_so(tmp_path: Path, bare_env: dict[str, str]) -> None:
    result = run_cli(["status"], bare_env, tmp_path)
    assert result.returncode == 1, describe(result)
    assert result.stderr.startswith("presence-bridge: no bridge here: REDIS_URL is not set")
    assert result.stdout == ""
    assert not (tmp_path / "data").exists()  # and no empty embedded Valkey was started


def test_redis_unreachable_is_one_line_without_the_password(tmp_path: Path, core_env: dict[str, str]) -> None:
    env = {**core_env, "REDIS_URL": f"redis://:secretpw@127.0.0.1:{free_port()}/0"}
    # A Redis that cannot be reached is a run-time failure for every command: exit 1.
    status, credentials = run_many([["status"], ["starface", "credentials", "list"]], env, tmp_path)
    assert status.returncode == 1, describe(status)
    assert status.stderr == "presence-bridge: Redis is unreachable (ConnectionError); check REDIS_URL\n"
    assert credentials.returncode == 1, describe(credentials)
    assert credentials.stderr == "presence-bridge: Redis (REDIS_URL) failed: ConnectionError\n"
    for result in (status, credentials):
        assert result.stdout == ""
        assert "secretpw" not in result.stderr


# -- explain ----------------------------------------------------------------------------------


async def test_explain(tmp_path: Path, redis_env: dict[str, str], redis_client: aioredis.Redis) -> None:
    user = StarfaceUser(1, "0001", "Anna.Berg@example.com", "Anna", "Berg", groups=("Support",))
    await DirectoryStore(redis_client).save(Selection((user,), ()), refreshed_at=time.time())
    await IdentityStore(redis_client).replace({"entra-anna": "0001"})
    log = DecisionLog(redis_client)
    await log.append(
        DecisionRecord(
            at=1_700_000_000.0,
            user_id="entra-anna",
            login="0001",
            trigger="teams presence",
            inputs={"teams": "Busy/InACall"},
            rule='rows."Busy/InACall"',
            actions=["STARFACE DND on"],
            results=["ok"],
            latency_ms=420.0,
        )
    )
    await log.append(
        DecisionRecord(
            at=1_700_000_060.0,
            user_id="entra-anna",
            login="0001",
            trigger="starface call",
            inputs={"calls": 1},
            rule="call presence",
            actions=[],
        )
    )
    full, limited, unknown, preview = run_many(
        [
            ["explain", "anna.berg@example.com"],
            ["explain", "0001", "--limit", "1"],
            ["explain", "unknown@example.com"],
            ["mapping", "preview", "--language", "en"],
        ],
        redis_env,
        tmp_path,
    )
    assert unknown.returncode == 2, describe(unknown)
    assert unknown.stdout == ""
    assert unknown.stderr == (
        "presence-bridge: 'unknown@example.com' is neither the login ID nor the e-mail "
        "of a bridged STARFACE user\n"
    )
    for result in (full, limited):
        assert result.returncode == 0, describe(result)
        assert result.stderr == ""
        lines = result.stdout.splitlines()
        assert lines[:3] == [
            "STARFACE login 0001, Anna Berg <Anna.Berg@example.com>",
            "Teams user id  entra-anna",
            "groups         Support",
        ]
        assert "2023-11-14 22:14:20 UTC  trigger: starface call" in lines
    out = full.stdout
    assert "last 2 decision(s), newest first:" in out
    assert out.index("trigger: starface call") < out.index("trigger: teams presence")
    assert "  inputs:  teams=Busy/InACall" in out
    assert '  rule:    rows."Busy/InACall"' in out
    assert "  action:  STARFACE DND on -> ok" in out
    assert "  latency: 420 ms from the triggering event to applied" in out
    assert "  action:  none (already as desired)" in out
    assert "last 1 decision(s), newest first:" in limited.stdout
    assert "teams presence" not in limited.stdout
    # mapping preview lists the linked user (and changes nothing).
    assert preview.returncode == 0, describe(preview)
    assert re.fullmatch(r" {4}0001  Teams \S+: .+\n", preview.stdout), preview.stdout
    assert len(await DecisionLog(redis_client).recent("entra-anna")) == 2


# -- login and renew --------------------------------------------------------------------------


def test_login_and_renew_configuration_errors(
    tmp_path: Path, bare_env: dict[str, str], redis_env: dict[str, str]
) -> None:
    listed = {**redis_env, "GRAPH_SERVICE_ACCOUNTS": "svc1@contoso.test"}
    unlisted, unconfigured, renew = run_jobs(
        [
            (["login", "other@contoso.test"], listed),
            (["login", "svc1@contoso.test", "--password", "--password-stdin"], bare_env),
            (["renew"], redis_env),
        ],
        tmp_path,
    )
    assert unlisted.returncode == 2, describe(unlisted)
    assert unlisted.stderr == "presence-bridge: other@contoso.test is not listed in GRAPH_SERVICE_ACCOUNTS\n"
    assert unconfigured.returncode == 2, describe(unconfigured)
    wanted = missing_keys([CORE])
    assert f"presence-bridge: configuration has {len(wanted)} problem(s)" in unconfigured.stderr
    for key in wanted:
        assert f"  - {key} is missing" in unconfigured.stderr
    assert renew.returncode == 2, describe(renew)
    assert renew.stderr == (
        "presence-bridge: configuration has 1 problem(s):\n"
        "  - AZURE_CLIENT_SECRET is missing: Client secret of the app registration\n"
    )
    for result in (unlisted, unconfigured, renew):
        assert result.stdout == ""
        assert_no_traceback(result.stderr)
    assert not (tmp_path / "data").exists()  # no embedded Valkey: REDIS_URL, or a bad configuration


# -- sandboxes --------------------------------------------------------------------------------


def test_sandbox_starface_serves_over_tls_and_stops_on_sigterm(
    tmp_path: Path, bare_env: dict[str, str]
) -> None:
    state = tmp_path / "starface"
    args = ["sandbox", "starface", "--port", "0", "--control-port", "0", "--state-dir", str(state)]
    with CliProcess(args, bare_env, tmp_path) as process:
        process.wait_for("Ctrl-C stops it.")
        base = process.wait_for(r"base URL\s+(https://127\.0\.0\.1:\d+)\n").group(1)
        control = process.wait_for(r"control URL\s+(https://\S+)").group(1)
        token = (state / "control-token").read_text().strip()
        with httpx.Client(verify=client_context(state / "ca.crt"), trust_env=False, timeout=5.0) as http:
            assert http.get(f"{base}/rest/login", headers={"X-Version": "2"}).status_code == 200
            users = http.get(f"{control}/control/users", headers={"Authorization": f"Bearer {token}"})
            assert users.status_code == 200
            assert [u["login"] for u in users.json()] == ["0001", "0002", "0003"]
        with pytest.raises(httpx.ConnectError):  # its own CA only: the system store does not trust it
            httpx.get(f"{base}/rest/login", trust_env=False, timeout=5.0)
        assert process.stop(signal.SIGTERM, timeout=5) == 0, process.output()
    assert token not in process.stdout
    assert_no_traceback(process.stderr)


def test_sandbox_starface_port_0_also_picks_a_free_control_port(
    tmp_path: Path, bare_env: dict[str, str]
) -> None:
    args = ["sandbox", "starface", "--port", "0", "--state-dir", str(tmp_path / "starface")]
    with CliProcess(args, bare_env, tmp_path) as process:
        control_port = int(process.wait_for(r"control URL\s+https://127\.0\.0\.1:(\d+)").group(1))
        assert process.stop(signal.SIGTERM, timeout=5) == 0, process.output()
    assert control_port >= 1024


def test_sandbox_graph_serves_over_tls_and_stops_on_sigterm(tmp_path: Path, bare_env: dict[str, str]) -> None:
    state = tmp_path / "graph"
    with CliProcess(
        ["sandbox", "graph", "--port", "0", "--state-dir", str(state)], bare_env, tmp_path
    ) as process:
        process.wait_for("client secret")
        base = process.wait_for(r"base URL\s+(https://127\.0\.0\.1:\d+)\n").group(1)
        ca_file = Path(process.wait_for(r"CA certificate\s+(\S+)\n").group(1))
        assert ca_file == state / "ca.crt"
        token = (state / "control-token").read_text().strip()
        with httpx.Client(verify=client_context(ca_file), trust_env=False, timeout=5.0) as http:
            url = f"{base}/_sandbox/status"
            assert http.get(url).status_code == 401
            assert http.get(url, headers={"Authorization": f"Bearer {token}"}).status_code == 200
        started = time.monotonic()
        assert process.stop(signal.SIGTERM, timeout=5) == 0, process.output()
        assert time.monotonic() - started < 5
    assert_no_traceback(process.stderr)
