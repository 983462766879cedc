"""The ``presence-bridge`` command line.

Exit codes: 0 success, 1 a runtime failure or (``status``) something needs an operator, 2 bad
usage or bad configuration (the message says what to fix).  No command prints a traceback for a
known error.  Commands that need Redis use ``REDIS_URL``, or without it the embedded Valkey in
``DATA_DIR`` (the running one, else a short-lived one on the same append-only file).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import ssl
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from service.cli.arguments import (
    Subparsers,
    add_credentials_arguments,
    add_login_arguments,
    add_renew_arguments,
    positive_int,
)
from service.cli.policy import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, PREFIX, CommandFailed, UsageError, say
from service.cli.store import load_settings, valkey_dir, with_redis
from service.core import heartbeat
from service.core.embedded import EmbeddedValkey, EmbeddedValkeyError, redis_url_for
from service.core.roles import CORE, GRAPH_APP, ROLES, SettingsError, required_groups

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from service.core.settings import Settings

log = logging.getLogger("presence_bridge")


def configure_logging(level: str) -> None:
    from service.core.logs import setup

    setup(level)


# -- serve -------------------------------------------------------------------------------------


def _add_serve(sub: Subparsers) -> None:
    parser = sub.add_parser(
        "serve",
        help="run the bridge (all roles, or one of web, worker, scheduler)",
        description=(
            "Run the bridge. --role web serves the public endpoints (/graph/notifications, "
            "/graph/lifecycle, /starface/uci/..., /healthz, /readyz); --role worker applies presence "
            "changes and call events to STARFACE and Teams and keeps the UCI sessions alive; --role "
            "scheduler keeps the STARFACE directory and the Graph subscriptions (one replica acts, by "
            "lease); --role all runs everything in one process. Without REDIS_URL an embedded Valkey is "
            "started in DATA_DIR (one machine only). Configuration: environment and ./.env (.env.example)."
        ),
    )
    parser.add_argument("--role", choices=ROLES, default="all", help="what this process runs (default: all)")
    parser.add_argument("--host", default="127.0.0.1", help="address the web tier binds (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port of the web tier (default: 8080)")
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus metrics on this separate port (default: off)",
    )
    parser.add_argument(
        "--tls-cert", type=Path, help="serve HTTPS with this certificate (PEM); else plain HTTP"
    )
    parser.add_argument("--tls-key", type=Path, help="private key (PEM) for --tls-cert")
    parser.add_argument(
        "--heartbeat-dir",
        type=Path,
        default=heartbeat.DEFAULT_DIR,
        help=f"where the event loop writes its heartbeat for `health` (default: {heartbeat.DEFAULT_DIR})",
    )
    parser.set_defaults(handler=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    if (args.tls_cert is None) != (args.tls_key is None):
        say("--tls-cert and --tls-key go together")
        return EXIT_USAGE
    if args.tls_cert is not None:
        try:  # a missing file or a key that does not fit is a usage error, not a traceback later
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(args.tls_cert, args.tls_key)
        except (OSError, ssl.SSLError) as exc:
            say(f"cannot use --tls-cert/--tls-key: {exc.strerror or exc}")
            return EXIT_USAGE
    settings = load_settings(required_groups(args.role))
    if args.role in ("all", "web"):
        problem = _cannot_listen(args.host, args.port)
        if problem:
            say(f"cannot listen on {args.host}:{args.port}: {problem}")
            return EXIT_FAILURE
        console = settings.console_port
        if console is not None:
            # The console must never share the public port: the webhook port faces the internet.
            if console == args.port:
                say(f"CONSOLE_PORT {console} is the public --port: give the console a port of its own")
                return EXIT_USAGE
            problem = _cannot_listen(settings.console_host, console)
            if problem:
                say(f"cannot listen on {settings.console_host}:{console} (CONSOLE_PORT): {problem}")
                return EXIT_FAILURE
    configure_logging(settings.log_level)
    embedded: EmbeddedValkey | None = None
    redis_url = settings.redis_url
    if redis_url is None:
        embedded = EmbeddedValkey(valkey_dir(settings))
        log.warning(
            "embedded Valkey in %s: for one machine only; set REDIS_URL to scale out", embedded.data_dir
        )
        try:
            embedded.start()
        except EmbeddedValkeyError as exc:
            say(f"cannot start the embedded Valkey: {exc}")
            return EXIT_FAILURE
        redis_url = embedded.url
    else:
        from service.core import storage

        problem = asyncio.run(storage.probe(redis_url))
        if problem:
            say(f"cannot use REDIS_URL {storage.redacted(redis_url)}: {problem}")
            return EXIT_USAGE
    try:
        asyncio.run(_serve(settings, redis_url, args))
    except SystemExit as exc:
        # uvicorn exits this way when it cannot start (e.g. the port was taken meanwhile).
        print(
            f"presence-bridge: the web tier could not start (exit {exc.code}); see the log above",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    finally:
        if embedded is not None:
            embedded.stop()
    return EXIT_OK


def _cannot_listen(host: str, port: int) -> str | None:
    """Why the web tier could not bind ``host:port``, found out before anything starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


async def _serve(settings: Settings, redis_url: str, args: argparse.Namespace) -> None:
    from service.core.metrics import serve_metrics
    from service.runtime import Runtime, WebOptions

    runtime = Runtime(
        settings,
        redis_url,
        role=args.role,
        web=WebOptions(args.host, args.port, _str(args.tls_cert), _str(args.tls_key)),
        heartbeat_dir=args.heartbeat_dir,
    )
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, runtime.stop.set)
    if args.metrics_port is not None:
        serve_metrics(args.metrics_port, args.host)
    await runtime.start()
    await runtime.wait()


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


# -- sandboxes ---------------------------------------------------------------------------------


_SANDBOXES = {
    "graph": (
        "Entra ID + Microsoft Graph presence stand-in (docs/sandbox-graph.md)",
        "Serve Entra ID and Graph presence over TLS from a throwaway CA (docs/sandbox-graph.md).",
    ),
    "starface": (
        "STARFACE PBX stand-in: REST, UCI, callbacks (docs/sandbox-starface.md)",
        "Serve STARFACE REST and UCI with a control API; see docs/sandbox-starface.md.",
    ),
}


_SANDBOX_MODULES = {"graph": "service.sandbox.graph_cli", "starface": "service.sandbox.starface"}


def _add_sandbox(sub: Subparsers) -> None:
    # Only names and help here: the sandboxes are large and no other command may import them, so
    # ``sandbox NAME ...`` is parsed by the sandbox's own parser (``_run_sandbox``).
    parser = sub.add_parser(
        "sandbox",
        help="run a stand-in for Microsoft Graph/Entra ID or for a STARFACE PBX",
        description="Faithful sandboxes of the outside systems, over TLS, for trying the bridge out.",
    )
    which = parser.add_subparsers(dest="sandbox", required=True, metavar="SANDBOX")
    for name, (summary, description) in _SANDBOXES.items():
        which.add_parser(name, help=summary, description=description, add_help=False)


def sandbox_parser(name: str) -> tuple[argparse.ArgumentParser, Callable[[argparse.Namespace], int]]:
    """The whole parser of ``sandbox NAME`` and its runner; this imports the sandbox."""
    import importlib

    module = importlib.import_module(_SANDBOX_MODULES[name])
    parser = argparse.ArgumentParser(prog=f"presence-bridge sandbox {name}", description=_SANDBOXES[name][1])
    module.add_arguments(parser)
    runner: Callable[[argparse.Namespace], int] = module.run
    return parser, runner


def _run_sandbox(name: str, argv: Sequence[str]) -> int:
    parser, runner = sandbox_parser(name)
    args = parser.parse_args(list(argv))
    if name == "graph":
        # It serves from a thread and stops cleanly on KeyboardInterrupt; SIGTERM (docker stop,
        # systemd, kill) would otherwise end the process with -15 without stopping the server.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    return runner(args)


# -- Graph service accounts --------------------------------------------------------------------


def _add_login(sub: Subparsers) -> None:
    parser = sub.add_parser(
        "login",
        help="sign a Graph service account in (device code, or username and password)",
        description=(
            "Sign in one of GRAPH_SERVICE_ACCOUNTS so it can hold a presence subscription (delegated "
            "Presence.Read.All). The token cache is stored encrypted in Redis for every replica."
        ),
    )
    add_login_arguments(parser)
    parser.set_defaults(handler=_run_login)


def _run_login(args: argparse.Namespace) -> int:
    from service.cli.accounts import run_login

    settings = load_settings([CORE])
    with redis_url_for(settings.redis_url, valkey_dir(settings)) as url:
        return run_login(args, settings, redis_url=url)


def _add_renew(sub: Subparsers) -> None:
    parser = sub.add_parser(
        "renew",
        help="one full subscription pass (create, renew, resync), then exit; for cron",
        description="Run one scheduler pass and exit. Does nothing while another replica holds the lease.",
    )
    add_renew_arguments(parser)
    parser.set_defaults(handler=_run_renew)


def _run_renew(args: argparse.Namespace) -> int:
    from service.bridge.identity import link_resolved
    from service.cli.accounts import run_renew
    from service.core import storage
    from service.starface.directory import DirectoryStore
    from subscriptions.users import Resolution

    settings = load_settings([CORE, GRAPH_APP])
    with redis_url_for(settings.redis_url, valkey_dir(settings)) as url:

        async def emails() -> list[str]:
            client = storage.connect(url)
            try:
                return await DirectoryStore(client).emails()
            finally:
                await client.aclose()

        async def linked(resolution: Resolution) -> None:
            client = storage.connect(url)
            try:
                await link_resolved(client, resolution.ids)
            finally:
                await client.aclose()

        return run_renew(args, settings, emails, on_resolution=linked, redis_url=url)


def _add_subscriptions(sub: Subparsers) -> None:
    parser = sub.add_parser(
        "subscriptions",
        help="the subscription scheduler alone, with the e-mail addresses from a file",
        description=(
            "Contend for the scheduler lease and keep the Graph presence subscriptions of the users "
            "listed in --emails-file (one address per line), without a STARFACE directory. For "
            "installations whose user list comes from elsewhere; serve --role scheduler is the usual way."
        ),
    )
    parser.add_argument("--emails-file", required=True, help="one e-mail address per line (# comments)")
    parser.add_argument(
        "--pass-seconds", type=float, default=60.0, help="pause between scheduler passes (default: 60)"
    )
    parser.set_defaults(handler=_run_subscriptions)


def _run_subscriptions(args: argparse.Namespace) -> int:
    from service.cli.accounts import emails_from_file, serve_scheduler

    settings = load_settings([CORE, GRAPH_APP])
    if not Path(args.emails_file).is_file():
        say(f"--emails-file {args.emails_file} does not exist")
        return EXIT_USAGE
    configure_logging(settings.log_level)
    with redis_url_for(settings.redis_url, valkey_dir(settings)) as url:
        return asyncio.run(
            serve_scheduler(settings, url, emails_from_file(args.emails_file), args.pass_seconds)
        )


# -- health, status and explain


def _add_health(sub: Subparsers) -> None:
    parser = sub.add_parser(
        "health",
        help="liveness probe of one role of a local serve process (for exec probes)",
        description=(
            "Exit 0 when the serve process of this host or container wrote its event-loop heartbeat for "
            "ROLE recently, 1 when it is missing or older than --max-age (the loop is stuck or the "
            "process is gone). Reads a file only: no Redis, no network, no settings."
        ),
    )
    parser.add_argument("--role", choices=heartbeat.ROLES, required=True, help="the role to check")
    parser.add_argument(
        "--heartbeat-dir",
        type=Path,
        default=heartbeat.DEFAULT_DIR,
        help=f"the serve process's --heartbeat-dir (default: {heartbeat.DEFAULT_DIR})",
    )
    parser.add_argument(
        "--max-age",
        type=float,
        default=heartbeat.MAX_AGE_SECONDS,
        help=f"seconds after which a heartbeat counts as stale (default: {heartbeat.MAX_AGE_SECONDS:.0f})",
    )
    parser.set_defaults(handler=_run_health)


def _run_health(args: argparse.Namespace) -> int:
    import time

    reading = heartbeat.read(args.heartbeat_dir, args.role)
    age = reading.age(time.time())
    if age is None:
        raise CommandFailed(
            f"{args.role}: no heartbeat in {args.heartbeat_dir}: serve --role {args.role} is not running here"
        )
    if age > args.max_age:
        raise CommandFailed(
            f"{args.role}: last heartbeat {age:.0f} s ago (pid {reading.pid}): its event loop is stuck"
        )
    print(f"{args.role}: alive, heartbeat {age:.1f} s ago (pid {reading.pid})")
    return EXIT_OK


# -- status and explain ------------------------------------------------------------------------


def _add_status(sub: Subparsers) -> None:
    parser = sub.add_parser(
        "status",
        help="subscriptions, token health, queues, dead letters, STARFACE sessions, last errors",
        description=(
            "Print the state of the bridge from Redis. Exit 0 when all is well, 1 when something needs "
            "an operator (an alert, dead letters, sessions down, failing users)."
        ),
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(handler=_run_status)


def _run_status(args: argparse.Namespace) -> int:
    from service.ops import status

    settings = load_settings([])
    if settings.redis_url is None and not valkey_dir(settings).is_dir():
        # Starting an empty embedded Valkey here would report a bridge that does not exist.
        raise CommandFailed(
            f"no bridge here: REDIS_URL is not set and DATA_DIR ({settings.data_dir}) holds no embedded "
            "Valkey; set REDIS_URL, or run status where `presence-bridge serve` keeps its data"
        )

    async def job(redis: aioredis.Redis) -> int:
        report = await status.collect(redis, settings)
        print(json.dumps(report, indent=2, default=str) if args.json else status.render(report))
        return EXIT_OK if status.healthy(report) else EXIT_FAILURE

    return with_redis(settings, job)


def _add_explain(sub: Subparsers) -> None:
    parser = sub.add_parser(
        "explain",
        help="why a user shows what they show: state and the last decisions",
        description="Print a user's observed state and last decisions (inputs, rule, actions, latency).",
    )
    parser.add_argument("who", help="STARFACE login ID or e-mail address of the user")
    parser.add_argument("--limit", type=int, default=50, help="how many decisions to print (default: 50)")
    parser.set_defaults(handler=_run_explain)


def _run_explain(args: argparse.Namespace) -> int:
    from service.ops.explain import UnknownPerson, explain

    settings = load_settings([])

    async def job(redis: aioredis.Redis) -> int:
        try:
            text = await explain(
                redis,
                args.who,
                limit=max(1, args.limit),
                dnd_policy=settings.starface_dnd_policy,
                rewrites_per_hour=settings.starface_rewrites_per_hour,
            )
            print(text)
        except UnknownPerson as exc:
            say(f"{exc}")
            return EXIT_USAGE
        return EXIT_OK

    return with_redis(settings, job)


def _add_dead_letters(sub: Subparsers) -> None:
    from service.cli import deadletters

    parser = sub.add_parser(
        "dead-letters",
        help="list, replay or purge the entries that kept failing",
        description=(
            "Entries that failed WORKER_MAX_DELIVERIES times wait in the dead-letter stream with their "
            "reason. List them, put them back on their stream once the cause is fixed, or purge them."
        ),
    )
    deadletters.add_arguments(parser)
    parser.set_defaults(handler=deadletters.run)


def _add_rotate(sub: Subparsers) -> None:
    from service.cli import rotate

    rotate.add_parser(sub)


# -- mapping -----------------------------------------------------------------------------------


def _add_mapping(sub: Subparsers) -> None:
    from service.cli import mapping

    parser = sub.add_parser(
        "mapping",
        help="check a Teams -> STARFACE mapping file, or preview its effect",
        description="Work with the mapping from Teams presence to STARFACE DND and status text.",
    )
    actions = parser.add_subparsers(dest="mapping_command", required=True, metavar="ACTION")
    check = actions.add_parser(
        "check",
        help="validate a mapping file and print the effective table",
        description=(
            "Validate a mapping TOML file and print the effective table, switches and group overrides. "
            "Without FILE, print the built-in table. Exit 0 when valid, 2 with every problem listed."
        ),
    )
    mapping.add_check_arguments(check)
    check.set_defaults(handler=mapping.run_check)
    preview = actions.add_parser(
        "preview",
        help="show what a mapping would change for every bridged user now (changes nothing)",
        description="Apply a mapping to every bridged user's current state and print the differences.",
    )
    mapping.add_check_arguments(preview)
    preview.set_defaults(handler=mapping.run_preview)
    export = actions.add_parser(
        "export",
        help="write the mapping version the workers apply (or --version N) as TOML",
        description=(
            "Print the current mapping version from Redis as a self-contained TOML file (every switch "
            "and row written out), fit for MAPPING_FILE or `mapping check`."
        ),
    )
    export.add_argument("--version", type=positive_int, help="an earlier version (see the console's history)")
    export.add_argument("-o", "--output", type=Path, help="write to this file instead of standard output")
    export.set_defaults(handler=mapping.run_export)


def _add_console(sub: Subparsers) -> None:
    from service.cli import console

    parser = sub.add_parser(
        "console",
        help="admin console helpers (the console itself runs in serve when CONSOLE_PORT is set)",
        description="Helpers for the admin console that `serve` runs on CONSOLE_PORT.",
    )
    actions = parser.add_subparsers(dest="console_command", required=True, metavar="ACTION")
    hashing = actions.add_parser(
        "hash-password",
        help="print the scrypt hash of a break-glass password for CONSOLE_ADMIN_PASSWORD_HASH",
        description=(
            "Ask for a password twice (or read one line from stdin) and print its scrypt hash. Put the "
            "hash in CONSOLE_ADMIN_PASSWORD_HASH and the user name in CONSOLE_ADMIN_USER."
        ),
    )
    hashing.add_argument(
        "--password-stdin", action="store_true", help="read the password from the first line of stdin"
    )
    hashing.set_defaults(handler=console.run_hash_password)


# -- STARFACE credentials ----------------------------------------------------------------------


def _add_starface(sub: Subparsers) -> None:
    parser = sub.add_parser(
        "starface",
        help="manage per-user STARFACE credentials",
        description="STARFACE administration for the bridge.",
    )
    what = parser.add_subparsers(dest="starface_command", required=True, metavar="WHAT")
    creds = what.add_parser(
        "credentials",
        help="import, set, list or delete per-user STARFACE credentials (stored encrypted)",
        description=(
            "UCI acts only for the logged-in user, so the bridge needs every bridged user's STARFACE "
            "login ID and password. They are stored encrypted with BRIDGE_SECRET_KEY and never printed."
        ),
    )
    add_credentials_arguments(creds)
    creds.set_defaults(handler=_run_credentials)


def _run_credentials(args: argparse.Namespace) -> int:
    from service.cli import credentials

    settings = load_settings(())
    with redis_url_for(settings.redis_url, valkey_dir(settings)) as url:
        return credentials.run(args, redis_url=url)


# -- demo --------------------------------------------------------------------------------------


def _add_demo(sub: Subparsers) -> None:
    parser = sub.add_parser(
        "demo",
        help="both sandboxes, an embedded Valkey and the whole bridge, playing a scripted scenario",
        description=(
            "Start an embedded Valkey, the Graph and STARFACE sandboxes over TLS, and the bridge with all "
            "roles; play both directions through a few users while printing a live table. Exit 0 only "
            "if every expectation held. Needs no configuration and no network."
        ),
    )
    parser.add_argument(
        "--keep-running",
        action="store_true",
        help="after the scenario, keep everything up to play with via the sandboxes' control APIs",
    )
    parser.add_argument("--users", type=int, default=3, help="how many demo users (default: 3)")
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path("./demo-state"),
        help="where the demo keeps its CA files, tokens and data (default: ./demo-state)",
    )
    parser.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from service.sandbox.demo import run_demo

    return run_demo(args)


# -- entry point -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="presence-bridge",
        description="Keep Microsoft Teams presence and a STARFACE PBX in agreement.",
        epilog=(
            "Every command reads its configuration from the environment and ./.env (see .env.example). "
            "Exit codes: 0 ok, 1 failure, 2 bad usage or configuration."
        ),
    )
    parser.add_argument("--version", action="version", version=f"presence-bridge {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_serve(sub)
    _add_demo(sub)
    _add_sandbox(sub)
    _add_login(sub)
    _add_renew(sub)
    _add_subscriptions(sub)
    _add_health(sub)
    _add_status(sub)
    _add_explain(sub)
    _add_dead_letters(sub)
    _add_rotate(sub)
    _add_mapping(sub)
    _add_console(sub)
    _add_starface(sub)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("presence-bridge")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if len(words) >= 2 and words[0] == "sandbox" and words[1] in _SANDBOXES:
        return _guarded(lambda: _run_sandbox(words[1], words[2:]))
    parser = build_parser()
    args = parser.parse_args(words)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return _guarded(lambda: handler(args))


def _guarded(run: Callable[[], int]) -> int:
    """The one place where a known error becomes its message and exit code."""
    try:
        return run()
    except SettingsError as exc:
        # Every problem is listed, one per line, so the whole configuration is fixed in one round.
        print(f"{PREFIX}{exc}", file=sys.stderr)
        return EXIT_USAGE
    except UsageError as exc:
        say(str(exc))
        return EXIT_USAGE
    except CommandFailed as exc:
        say(str(exc))
        return EXIT_FAILURE
    except EmbeddedValkeyError as exc:
        say(f"cannot start the embedded Valkey: {exc}")
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:
        # The reader (e.g. `| head`) went away; that is not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
