"""The STARFACE sandbox: a PBX stand-in with REST, OAuth, UCI XML-RPC, call callbacks and faults.

``presence-bridge sandbox starface`` runs it from the command line (``add_arguments`` / ``run``);
tests start it in a background thread with ``SandboxThread`` (see ``tests/fixtures/starface_sandbox.py``).
Routes, bodies and the choices made where the reference is silent: ``docs/sandbox-starface.md``.

Two listeners serve one state: the PBX listener (REST, OAuth, ``/xml-rpc`` and ``/control``) and a
control listener (``/control`` only).  The "refuse" fault really closes the PBX listener and drops
its open connections, so clients see "connection refused" as from a PBX that is down, while the
control listener stays up to end the fault.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import signal
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.core.tls import client_context
from service.sandbox.clock import Clock
from service.sandbox.secretfile import write_secret
from service.sandbox.starface_app import build_control_app, build_pbx_app
from service.sandbox.starface_callbacks import Dispatcher
from service.sandbox.starface_context import Context
from service.sandbox.starface_control import stop_ucc_clients
from service.sandbox.starface_model import DEFAULT_SESSION_TIMEOUT_SECONDS, Pbx
from service.sandbox.starface_wire import PLAIN, WIRE_TYPES, Wire
from service.sandbox.tls import CertificateAuthority
from service.web.server import AppServer, LoopThread

DEFAULT_STATE_DIR = Path("sandbox-state/starface")


@dataclass
class SandboxOptions:
    state_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    control_port: int = 0
    tls: bool = True
    namespace: str = "v30"
    control_token: str | None = None
    oauth_client_secret: str | None = None
    session_timeout: float = DEFAULT_SESSION_TIMEOUT_SECONDS
    callback_ca_file: Path | None = None
    clock: Clock | None = None
    # "plain" (the documented types) or "extensions" (Apache XML-RPC's ex:i8, nil, untyped strings).
    wire_types: str = PLAIN


class StarfaceSandbox:
    """The running sandbox on the current event loop: ``await start()``, ``await stop()``."""

    def __init__(self, options: SandboxOptions) -> None:
        self.options = options
        self.clock = options.clock or Clock()
        state_dir = options.state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        self.ca = CertificateAuthority("STARFACE sandbox CA")
        self.ca_file = self.ca.write_ca(state_dir / "ca.crt")
        self.control_token = options.control_token or secrets.token_urlsafe(32)
        self.control_token_file = write_secret(state_dir / "control-token", self.control_token + "\n")
        self.pbx = Pbx(
            self.clock,
            namespace=options.namespace,
            session_timeout=options.session_timeout,
            oauth_client_secret=options.oauth_client_secret,
        )
        self.oauth_client_secret_file = write_secret(
            state_dir / "oauth-client-secret", self.pbx.oauth_client_secret + "\n"
        )
        trust = client_context(options.callback_ca_file or self.ca_file)
        if options.wire_types not in WIRE_TYPES:
            raise ValueError(f"wire_types must be one of {', '.join(WIRE_TYPES)}")
        wire = Wire(options.wire_types)
        self.dispatcher = Dispatcher(self.clock, trust, self._session_is_live, wire=wire)
        self.context = Context(self.pbx, self.dispatcher, self.control_token, wire=wire)
        self.context.set_listening = self._set_listening
        server_tls: ssl.SSLContext | None = None
        if options.tls:
            names = list(dict.fromkeys([options.host, "localhost", "127.0.0.1", "::1"]))
            server_tls = self.ca.issue(names).server_context(state_dir, "server")
        listen: dict[str, Any] = {
            "host": options.host,
            "ssl_context": server_tls,
            "lifespan": "off",
            "http": "h11",
        }
        self._pbx_listener = AppServer(build_pbx_app(self.context), port=options.port, **listen)
        self._control_listener = AppServer(
            build_control_app(self.context), port=options.control_port, **listen
        )

    def _session_is_live(self, login: str, session_id: str) -> bool:
        session = self.pbx.session(login)
        return session is not None and session.id == session_id

    async def _set_listening(self, on: bool) -> None:
        # The request that sets the fault may itself be on the PBX listener: do not wait for it.
        if on:
            await self._pbx_listener.start()
        else:
            await self._pbx_listener.stop_accepting()

    def _url(self, port: int) -> str:
        host = f"[{self.options.host}]" if ":" in self.options.host else self.options.host
        return f"{'https' if self.options.tls else 'http'}://{host}:{port}"

    @property
    def base_url(self) -> str:
        return self._url(self._pbx_listener.port)

    @property
    def control_url(self) -> str:
        return self._url(self._control_listener.port)

    async def start(self) -> None:
        await self._pbx_listener.start()
        await self._control_listener.start()
        self.pbx.issuer = f"{self.base_url}/auth/realms/pbx"
        self.context.info.update(
            baseUrl=self.base_url,
            controlUrl=self.control_url,
            caFile=str(self.ca_file),
            tls=self.options.tls,
        )

    async def stop(self) -> None:
        await stop_ucc_clients(self.context)
        await self._pbx_listener.stop()
        await self._control_listener.stop()
        await self.dispatcher.close()


class SandboxThread(LoopThread):
    """Runs a ``StarfaceSandbox`` on its own event loop in a daemon thread.

    Synchronous and asynchronous tests can then both talk to it, and a test's own event loop is
    never needed for the sandbox to answer or to post callbacks.
    """

    def __init__(self, options: SandboxOptions) -> None:
        self.sandbox = StarfaceSandbox(options)
        super().__init__(self.sandbox.start, self.sandbox.stop, name="starface-sandbox")

    def start(self, timeout: float = 30.0) -> StarfaceSandbox:  # type: ignore[override]
        super().start(timeout)
        return self.sandbox


# -- command line ----------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8443, help="PBX port (default 8443)")
    parser.add_argument(
        "--control-port",
        type=int,
        default=None,
        help="control API port (default: PBX port + 1, or a free port with --port 0)",
    )
    parser.add_argument(
        "--tls",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="serve HTTPS from a throwaway CA written to the state dir (default on)",
    )
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, help="CA, token and users files")
    parser.add_argument("--namespace", default="v30", help="UCI namespace the PBX speaks (v30 or v22)")
    parser.add_argument("--control-token", default=None, help="bearer token of /control (default: random)")
    parser.add_argument("--oauth-client-secret", default=None, help="rest-client-headless secret (random)")
    parser.add_argument(
        "--session-timeout",
        type=float,
        default=DEFAULT_SESSION_TIMEOUT_SECONDS,
        help="seconds without a UCI call after which the PBX drops a session (default 60)",
    )
    parser.add_argument(
        "--callback-ca-file", type=Path, default=None, help="CA that https callbacks must chain to"
    )
    users = parser.add_mutually_exclusive_group()
    users.add_argument("--seed-users", type=int, default=3, help="create N users 0001..N (default 3)")
    users.add_argument("--users-file", type=Path, default=None, help="JSON list of users to create")
    parser.add_argument("--email-domain", default="example.com", help="domain of seeded users' e-mail")
    parser.add_argument(
        "--wire-types",
        choices=WIRE_TYPES,
        default=PLAIN,
        help="value types of UCI answers and callbacks: plain (default) or extensions (Java's ex:i8, nil)",
    )


def _seed(pbx: Pbx, args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.users_file is not None:
        entries = json.loads(Path(args.users_file).read_text(encoding="utf-8"))
        if not isinstance(entries, list):
            raise SystemExit(f"{args.users_file}: expected a JSON list of users")
    else:
        entries = [
            {
                "login": f"{n:04d}",
                "password": secrets.token_urlsafe(12),
                "email": f"user{n:04d}@{args.email_domain}",
                "firstName": "Sandbox",
                "familyName": f"User {n:04d}",
                "oauthAllowed": True,
            }
            for n in range(1, args.seed_users + 1)
        ]
    for entry in entries:
        pbx.add_user(
            str(entry["login"]),
            str(entry["password"]),
            email=str(entry.get("email", f"{entry['login']}@{args.email_domain}")),
            first_name=str(entry.get("firstName", "")),
            family_name=str(entry.get("familyName", "")),
            number=entry.get("number"),
            oauth_allowed=bool(entry.get("oauthAllowed", False)),
        )
    return [dict(e) for e in entries]


async def _serve(args: argparse.Namespace) -> None:
    options = SandboxOptions(
        state_dir=args.state_dir,
        host=args.host,
        port=args.port,
        control_port=(0 if args.port == 0 else args.port + 1)
        if args.control_port is None
        else args.control_port,
        tls=args.tls,
        namespace=args.namespace,
        control_token=args.control_token,
        oauth_client_secret=args.oauth_client_secret,
        session_timeout=args.session_timeout,
        callback_ca_file=args.callback_ca_file,
        wire_types=args.wire_types,
    )
    # Handle SIGTERM before saying we are ready: a caller may stop us the moment it reads the URLs.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    sandbox = StarfaceSandbox(options)
    seeded = _seed(sandbox.pbx, args)
    users_file = write_secret(options.state_dir / "users.json", json.dumps(seeded, indent=2) + "\n")
    await sandbox.start()
    lines = [
        f"STARFACE sandbox (UCI namespace {options.namespace})",
        f"  base URL           {sandbox.base_url}",
        f"  control URL        {sandbox.control_url}  (also under {sandbox.base_url}/control)",
        f"  CA file            {sandbox.ca_file if options.tls else '(TLS off)'}",
        f"  control token file {sandbox.control_token_file}",
        f"  OAuth secret file  {sandbox.oauth_client_secret_file}",
        f"  users (passwords in {users_file}):",
        *(f"    {u['login']}  {u.get('email', '')}" for u in seeded),
        "Ctrl-C stops it.",
    ]
    print("\n".join(lines), flush=True)
    try:
        await stop.wait()
    finally:
        await sandbox.stop()


def run(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C or SIGTERM; returns the process exit code."""
    if not (args.namespace.startswith("v") and args.namespace[1:].isdigit()):
        print(f"--namespace must look like v30 or v22, not {args.namespace!r}")
        return 2
    try:
        asyncio.run(_serve(args))
    except KeyboardInterrupt:
        return 0
    return 0
