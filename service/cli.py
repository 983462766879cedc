"""The ``presence-bridge`` command line.

Exit codes: 0 success, 1 a runtime failure (the message says what failed), 2 bad usage or bad
configuration (the message says what to fix).  No command prints a traceback for a known error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import uvicorn

from service.embedded import EmbeddedValkey, EmbeddedValkeyError
from service.settings import CORE, Settings, SettingsError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

log = logging.getLogger("presence_bridge")

ROLES = ("all", "web", "worker")


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )


def _load_settings(require: Sequence[str]) -> Settings:
    return Settings.from_env(require=require)


# -- serve -------------------------------------------------------------------------------------


def _add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "serve",
        help="run the bridge (web tier, workers, or both)",
        description=(
            "Run the bridge. --role web serves the public endpoints (/graph/notifications, "
            "/graph/lifecycle, /healthz, /readyz); --role worker applies queued presence changes; "
            "--role all runs both in one process. Without REDIS_URL an embedded Valkey is started "
            "in DATA_DIR (one machine only). Configuration comes from the environment and ./.env; "
            "see .env.example."
        ),
    )
    parser.add_argument("--role", choices=ROLES, default="all", help="what this process runs (default: all)")
    parser.add_argument("--host", default="127.0.0.1", help="address the web tier binds (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port of the web tier (default: 8080)")
    parser.add_argument(
        "--tls-cert", type=Path, help="serve HTTPS with this certificate (PEM); else plain HTTP"
    )
    parser.add_argument("--tls-key", type=Path, help="private key (PEM) for --tls-cert")
    parser.set_defaults(handler=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    if (args.tls_cert is None) != (args.tls_key is None):
        print("presence-bridge: --tls-cert and --tls-key go together", file=sys.stderr)
        return EXIT_USAGE
    settings = _load_settings([CORE])
    _configure_logging(settings.log_level)
    embedded: EmbeddedValkey | None = None
    redis_url = settings.redis_url
    if redis_url is None:
        embedded = EmbeddedValkey(Path(settings.data_dir) / "valkey")
        log.warning(
            "embedded Valkey in %s: for one machine only; set REDIS_URL to scale out", embedded.data_dir
        )
        try:
            embedded.start()
        except EmbeddedValkeyError as exc:
            print(f"presence-bridge: cannot start the embedded Valkey: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        redis_url = embedded.url
    try:
        asyncio.run(_serve(settings, redis_url, args))
    finally:
        if embedded is not None:
            embedded.stop()
    return EXIT_OK


async def _serve(settings: Settings, redis_url: str, args: argparse.Namespace) -> None:
    from service.app import Server, create_app
    from service.storage import connect_worker
    from service.worker import PresenceWorker

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    tasks: list[asyncio.Task[None]] = []
    server: Server | None = None
    worker_redis = None
    if args.role in ("all", "web"):
        config = uvicorn.Config(
            create_app(settings, redis_url=redis_url),
            host=args.host,
            port=args.port,
            log_level=settings.log_level.lower(),
            ssl_certfile=str(args.tls_cert) if args.tls_cert else None,
            ssl_keyfile=str(args.tls_key) if args.tls_key else None,
            lifespan="on",
        )
        server = Server(config)
        tasks.append(asyncio.create_task(server.serve(), name="web"))
    if args.role in ("all", "worker"):
        worker_redis = connect_worker(redis_url)
        worker = PresenceWorker(worker_redis, settings)
        tasks.append(asyncio.create_task(worker.run(stop.is_set), name="worker"))
        log.info("worker %s consuming presence changes", worker.consumer.name)
    done_waiter: asyncio.Task[None] = asyncio.create_task(_wait(stop))
    finished, _ = await asyncio.wait([done_waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
    stop.set()
    if server is not None:
        server.should_exit = True
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=10)
    done_waiter.cancel()
    if worker_redis is not None:
        await worker_redis.aclose()
    for task in finished:
        if task is not done_waiter and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


async def _wait(event: asyncio.Event) -> None:
    await event.wait()


# -- mapping -----------------------------------------------------------------------------------


def _add_mapping(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from service import mapping

    parser = sub.add_parser(
        "mapping",
        help="check a Teams -> STARFACE mapping file",
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


# -- entry point -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="presence-bridge",
        description="Keep Microsoft Teams presence and a STARFACE PBX in agreement.",
        epilog="Every command reads its configuration from the environment and ./.env (see .env.example).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_serve(sub)
    _add_mapping(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except SettingsError as exc:
        print(f"presence-bridge: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:
        # The reader (e.g. `| head`) went away; that is not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
