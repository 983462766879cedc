"""``presence-bridge demo``: the whole bridge between both sandboxes, on an embedded Valkey.

Everything runs on this machine and over real sockets: the Graph/Entra sandbox and the STARFACE
sandbox serve TLS from their own throwaway CAs, the bridge's public endpoint serves TLS from a
certificate of the Graph sandbox's CA (so Graph's handshake and STARFACE's callbacks both reach
it), and the bridge trusts exactly those two CAs.  ``DemoWorld`` is also what the end-to-end
tests drive.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import shutil
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import SecretStr

from service.bridge.decisions import DecisionLog
from service.bridge.identity import IdentityStore
from service.core.clock import Clock, SystemClock
from service.core.embedded import EmbeddedValkey, free_port
from service.core.secretbox import SecretBox
from service.core.settings import Settings
from service.core.storage import connect_worker
from service.core.tls import client_context
from service.sandbox.graph import GraphSandbox
from service.sandbox.graph_host import SandboxOptions as GraphOptions
from service.sandbox.starface import SandboxOptions as StarfaceOptions
from service.sandbox.starface import SandboxThread, StarfaceSandbox
from service.starface.credentials import CredentialStore
from service.web.server import ServerThread
from subscriptions.tokens import Tokens

SERVICE_ACCOUNT = "presence-sync@demo.example"
# Signs in to the admin console with Microsoft: the sandbox gives it the console's app role.
CONSOLE_ADMIN = "admin@demo.example"
ADMIN_LOGIN = "0000"


@dataclass(frozen=True)
class Person:
    login: str
    first: str
    last: str

    @property
    def email(self) -> str:
        return f"{self.first.lower()}.{self.last.lower()}@demo.example"


PEOPLE = [
    Person("0001", "Anna", "Albrecht"),
    Person("0002", "Ben", "Becker"),
    Person("0003", "Carla", "Conrad"),
    Person("0004", "David", "Dietz"),
    Person("0005", "Eva", "Engel"),
]


class Expectation(Exception):
    """A demo expectation did not hold in time; ``what`` says which."""

    def __init__(self, what: str, seen: str) -> None:
        self.what = what
        self.seen = seen
        super().__init__(f"expected {what}, but saw {seen}")


@dataclass
class DemoWorld:
    state_dir: Path
    users: int = 3
    graph_options: dict[str, Any] = field(default_factory=dict)
    # Options of the STARFACE sandbox, e.g. {"wire_types": "extensions"}.
    starface_options: dict[str, Any] = field(default_factory=dict)
    settings_overrides: dict[str, str] = field(default_factory=dict)
    clock: Clock | None = None
    # Run the bridge on the Graph sandbox's clock, so a test can speed time up for both.
    graph_clock: bool = False
    # Roles run in this process; a test may run the others as real subprocesses.
    roles: tuple[str, ...] = ("all",)
    # Serve the admin console too (CONSOLE_PORT on loopback, enrolment on).
    console: bool = False
    redis_url: str | None = None
    people: list[Person] = field(default_factory=list)
    entra_ids: dict[str, str] = field(default_factory=dict)
    settings: Settings | None = None
    port: int = 0
    tls: tuple[str, str] = ("", "")
    graph: GraphSandbox | None = None
    graph_server: ServerThread | None = None
    starface: StarfaceSandbox | None = None
    runtimes: list[Any] = field(default_factory=list)
    _valkey: EmbeddedValkey | None = None
    _starface_thread: SandboxThread | None = None
    _http: aiohttp.ClientSession | None = None
    _redis: Any = None

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        from service.runtime import Runtime, WebOptions

        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.people = PEOPLE[: max(1, min(self.users, len(PEOPLE)))]
        if self.redis_url is None:
            self._valkey = EmbeddedValkey(self.state_dir / "valkey")
            self._valkey.start()
            self.redis_url = self._valkey.url
        options = {"coalesce_seconds": 0.1, "device_code_interval": 1, **self.graph_options}
        self.graph = GraphSandbox(GraphOptions(**options), state_dir=self.state_dir / "graph")
        self.graph_server = self.graph.serve_in_thread()
        if self.graph_clock:
            self.clock = self.graph.clock
        self._starface_thread = SandboxThread(
            StarfaceOptions(
                state_dir=self.state_dir / "starface",
                callback_ca_file=self.graph.ca_file,
                **self.starface_options,
            )
        )
        self.starface = self._starface_thread.start()
        bundle = await asyncio.to_thread(
            _bundle,
            self.state_dir / "trusted-cas.pem",
            [Path(self.graph.ca_file), Path(self.starface.ca_file)],
        )
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=client_context(str(bundle))),
            timeout=aiohttp.ClientTimeout(total=30),
        )
        await self._seed()
        port = free_port()
        cert_file, key_file = self.graph.ca.issue(["127.0.0.1", "localhost"]).write(
            self.state_dir / "tls", "bridge"
        )
        env = {
            "REDIS_URL": self.redis_url,
            "PUBLIC_BASE_URL": f"https://127.0.0.1:{port}",
            "BRIDGE_SECRET_KEY": secrets.token_urlsafe(32),
            "AZURE_TENANT_ID": self.graph.options.tenant_id,
            "AZURE_CLIENT_ID": self.graph.options.client_id,
            "AZURE_CLIENT_SECRET": self.graph.options.client_secret,
            "GRAPH_BASE_URL": self.graph_server.base_url,
            "AUTHORITY_BASE_URL": self.graph_server.base_url,
            "EXTRA_CA_FILE": str(bundle),
            "STARFACE_BASE_URL": self.starface.base_url,
            "STARFACE_ADMIN_LOGIN": ADMIN_LOGIN,
            "STARFACE_ADMIN_PASSWORD": self._password(ADMIN_LOGIN),
            "STARFACE_GROUP": "Demo",
            "GRAPH_SERVICE_ACCOUNTS": SERVICE_ACCOUNT,
            "SCHEDULER_PASS_SECONDS": "2",
            "STARFACE_DIRECTORY_REFRESH_SECONDS": "5",
            "WORKER_CLAIM_IDLE_MS": "5000",
            "LOG_LEVEL": "WARNING",
            **({"CONSOLE_PORT": str(free_port()), "CONSOLE_ENROLMENT": "true"} if self.console else {}),
            **self.settings_overrides,
        }
        self.settings = Settings.from_env(env, env_file=None)
        self._redis = connect_worker(self.redis_url)
        box = SecretBox.from_settings(self.settings)
        await CredentialStore(self._redis, box).put_many(
            {p.login: self._password(p.login) for p in self.people}
        )
        if self.settings.graph_service_accounts:  # poll mode runs without any
            tokens = Tokens.from_settings(self._redis, self.settings)
            await tokens.login_with_password(SERVICE_ACCOUNT, self._password(SERVICE_ACCOUNT))
        self.port = port
        self.tls = (str(cert_file), str(key_file))
        for role in self.roles:
            runtime = Runtime(
                self.settings,
                self.redis_url,
                role=role,
                web=WebOptions("127.0.0.1", port, str(cert_file), str(key_file)),
                clock=self.clock or SystemClock(),
            )
            await runtime.start()
            self.runtimes.append(runtime)

    def environment(self) -> dict[str, str]:
        """The bridge's settings as environment variables, for a bridge process of its own."""
        assert self.settings is not None
        from service.core.settings import FIELDS

        env: dict[str, str] = {}
        for spec in FIELDS:
            value = getattr(self.settings, spec.attr)
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if value is None or value == () or spec.env == "OPENID_METADATA_URL":
                continue
            env[spec.env] = (
                ",".join(value)
                if isinstance(value, tuple)
                else str(value).lower()
                if isinstance(value, bool)
                else str(value)
            )
        return env

    async def close(self) -> None:
        for runtime in self.runtimes:
            await runtime.close()
        if self._redis is not None:
            await self._redis.aclose()
        if self._http is not None:
            await self._http.close()
        if self._starface_thread is not None:
            self._starface_thread.stop()
        if self.graph_server is not None:
            self.graph_server.stop()
        if self._valkey is not None:
            self._valkey.stop()

    def password(self, who: str) -> str:
        """The sandbox password of a demo account (the admin, a person, the service account)."""
        return self._password(who)

    def _password(self, who: str) -> str:
        # Stable per demo run; --keep-running prints the two a person needs to try the console.
        return f"demo-{who}-{id(self) % 100000}"

    async def _seed(self) -> None:
        for person in self.people:
            # With a password, each person can sign in at the console's /enrol.
            body = {
                "displayName": f"{person.first} {person.last}",
                "mail": person.email,
                "password": self._password(person.email),
            }
            user = await self.graph_control("POST", "/users", body)
            self.entra_ids[person.login] = user["id"]
            # Each person has a Teams desktop client that is Available.
            await self.set_teams(person, "Available", "Available")
        await self.graph_control(
            "POST",
            "/users",
            {
                "displayName": "Presence sync",
                "userPrincipalName": SERVICE_ACCOUNT,
                "password": self._password(SERVICE_ACCOUNT),
            },
        )
        await self.graph_control(
            "POST",
            "/users",
            {
                "displayName": "Console Admin",
                "userPrincipalName": CONSOLE_ADMIN,
                "password": self._password(CONSOLE_ADMIN),
                "appRoles": ["PresenceBridge.Admin"],
            },
        )
        await self.starface_control(
            "POST", "/control/users", {"login": ADMIN_LOGIN, "password": self._password(ADMIN_LOGIN)}
        )
        for person in self.people:
            await self.starface_control(
                "POST",
                "/control/users",
                {
                    "login": person.login,
                    "password": self._password(person.login),
                    "email": person.email,
                    "firstName": person.first,
                    "familyName": person.last,
                },
            )
        await self.starface_control(
            "POST", "/control/groups", {"name": "Demo", "members": [p.login for p in self.people]}
        )

    # -- the sandboxes' control APIs -------------------------------------------------------------

    async def graph_control(self, method: str, path: str, body: Any = None) -> Any:
        assert self.graph is not None
        assert self.graph_server is not None
        return await self._control(
            method, f"{self.graph_server.base_url}/_sandbox{path}", self.graph.options.control_token, body
        )

    async def starface_control(self, method: str, path: str, body: Any = None) -> Any:
        assert self.starface is not None
        return await self._control(
            method, f"{self.starface.control_url}{path}", self.starface.control_token, body
        )

    async def _control(self, method: str, url: str, token: str, body: Any) -> Any:
        assert self._http is not None
        async with self._http.request(
            method, url, json=body, headers={"Authorization": f"Bearer {token}"}
        ) as response:
            text = await response.text()
            if response.status >= 400:
                raise RuntimeError(
                    f"sandbox control {method} {url.split('/', 3)[-1]}: {response.status} {text}"
                )
            return await response.json(content_type=None) if text else None

    async def set_teams(self, person: Person, availability: str, activity: str) -> None:
        await self.graph_control(
            "PUT",
            f"/users/{self.entra_ids[person.login]}/sessions/desktop",
            {"availability": availability, "activity": activity},
        )

    async def teams_presence(self, person: Person) -> str:
        info = await self.graph_control("GET", f"/users/{self.entra_ids[person.login]}/sessions")
        presence = info.get("presence", info)
        return f"{presence.get('availability')}/{presence.get('activity')}"

    async def starface_state(self, person: Person) -> tuple[bool, str]:
        user = await self.starface_control("GET", f"/control/users/{person.login}")
        return bool(user.get("dnd")), str(user.get("statusText") or "")

    async def place_call(self, person: Person) -> str:
        call = await self.starface_control(
            "POST",
            "/control/calls",
            {
                "login": person.login,
                "direction": "incoming",
                "remoteNumber": "+497111234567",
                "remoteName": "Kunde",
            },
        )
        return str(call["id"])

    async def answer(self, call_id: str) -> None:
        await self.starface_control("POST", f"/control/calls/{call_id}/answer", {})

    async def hang_up(self, call_id: str) -> None:
        await self.starface_control("POST", f"/control/calls/{call_id}/hangup", {})

    async def last_decision(self, person: Person) -> str:
        user_id = await IdentityStore(self._redis).user_for(person.login)
        if user_id is None:
            return "not linked yet"
        records = await DecisionLog(self._redis).recent(user_id, 1)
        if not records:
            return "none yet"
        record = records[0]
        return "; ".join(record.actions) or "no change needed"

    # -- waiting ---------------------------------------------------------------------------------

    async def wait_for(
        self, what: str, check: Callable[[], Awaitable[tuple[bool, str]]], within: float = 30.0
    ) -> None:
        deadline = time.monotonic() + within
        seen = "nothing"
        while time.monotonic() < deadline:
            ok, seen = await check()
            if ok:
                return
            await asyncio.sleep(0.1)
        raise Expectation(what, seen)

    async def ready(self, within: float = 45.0) -> None:
        """Wait until every person is linked, subscribed, has a UCI session and a first STARFACE state."""

        async def linked() -> tuple[bool, str]:
            links = await IdentityStore(self._redis).all()
            return len(links) == len(self.people), f"{len(links)} of {len(self.people)} users linked"

        await self.wait_for("every demo user linked to Teams", linked, within)
        for person in self.people:
            await self.expect_starface(person, False, "Verfügbar", within)

    async def expect_starface(self, person: Person, dnd: bool, text: str, within: float = 30.0) -> None:
        async def check() -> tuple[bool, str]:
            state = await self.starface_state(person)
            return state == (dnd, text), f"DND {'on' if state[0] else 'off'}, text {state[1]!r}"

        await self.wait_for(
            f"{person.first}'s STARFACE DND {'on' if dnd else 'off'} with {text!r}", check, within
        )

    async def expect_teams(self, person: Person, presence: str, within: float = 30.0) -> None:
        async def check() -> tuple[bool, str]:
            seen = await self.teams_presence(person)
            return seen == presence, seen

        await self.wait_for(f"{person.first}'s Teams presence {presence}", check, within)

    async def table(self) -> str:
        rows = [f"  {'user':<16} {'Teams':<26} {'DND':<4} {'status text':<28} last decision"]
        for person in self.people:
            dnd, text = await self.starface_state(person)
            rows.append(
                f"  {person.first + ' (' + person.login + ')':<16} {await self.teams_presence(person):<26} "
                f"{'on' if dnd else 'off':<4} {text:<28} {await self.last_decision(person)}"
            )
        return "\n".join(rows)


async def scenario(world: DemoWorld, say: Callable[[str], None]) -> None:
    """Both directions, as a STARFACE admin would try them."""
    anna = world.people[0]
    ben = world.people[1] if len(world.people) > 1 else anna
    say("Waiting for the bridge: directory, Teams users, subscription, UCI sessions ...")
    await world.ready()
    say(await world.table())

    say(f"\n1. {anna.first} joins a Teams call -> STARFACE must not ring her: DND on, 'Im Gespräch'")
    await world.set_teams(anna, "Busy", "InACall")
    await world.expect_starface(anna, True, "Im Gespräch")
    say(await world.table())

    say(f"\n2. {anna.first}'s Teams call ends -> DND off, 'Verfügbar'")
    await world.set_teams(anna, "Available", "Available")
    await world.expect_starface(anna, False, "Verfügbar")
    say(await world.table())

    say(f"\n3. {ben.first} answers a STARFACE call -> Teams shows him Busy / In a call")
    call = await world.place_call(ben)
    await world.answer(call)
    await world.expect_teams(ben, "Busy/InACall")
    # The bridge's own Teams session comes back as a notification; it must not set his DND.
    await asyncio.sleep(1.0)
    await world.expect_starface(ben, False, "Verfügbar", within=5)
    say(await world.table())

    say(f"\n4. {ben.first} hangs up -> after a short debounce, Teams shows him Available again")
    await world.hang_up(call)
    await world.expect_teams(ben, "Available/Available")
    await world.expect_starface(ben, False, "Verfügbar", within=5)
    say(await world.table())

    if len(world.people) > 2:
        carla = world.people[2]
        say(f"\n5. {carla.first} sets Do not disturb in Teams -> STARFACE DND on, 'Nicht Stören'")
        await world.set_teams(carla, "DoNotDisturb", "DoNotDisturb")
        await world.expect_starface(carla, True, "Nicht Stören")
        say(await world.table())


def _bundle(path: Path, cas: list[Path]) -> Path:
    path.write_bytes(b"".join(ca.read_bytes() for ca in cas))
    return path


def run_demo(args: argparse.Namespace) -> int:
    from service.core.logs import setup

    setup("WARNING")
    state_dir: Path = args.state_dir
    if state_dir.exists():
        shutil.rmtree(state_dir)
    world = DemoWorld(state_dir, users=args.users, console=args.keep_running)

    def say(text: str) -> None:
        print(text, flush=True)

    async def main() -> int:
        started = time.monotonic()
        say("Starting an embedded Valkey, the Graph and STARFACE sandboxes (TLS) and the bridge ...")
        try:
            await world.start()
            await scenario(world, say)
        except Expectation as exc:
            say(f"\nFAILED: {exc}")
            return 1
        finally:
            if not args.keep_running:
                await world.close()
        say(f"\nEvery expectation held ({time.monotonic() - started:.1f} s).")
        if args.keep_running:
            await _keep_running(world, say)
            await world.close()
        return 0

    return asyncio.run(main())


async def _keep_running(world: DemoWorld, say: Callable[[str], None]) -> None:
    from service.console.app import console_base_url

    assert world.graph is not None
    assert world.graph_server is not None
    assert world.starface is not None
    assert world.settings is not None
    graph_token = world.graph.state_dir / "control-token"
    say(
        "\nStill running; play with it through the sandboxes' control APIs (Ctrl-C stops):\n"
        f"  bridge            {world.settings.public_base_url}  (status: presence-bridge status with "
        f"REDIS_URL={world.redis_url})\n"
        f"  Graph sandbox     {world.graph_server.base_url}/_sandbox  token file {graph_token}\n"
        f"  STARFACE sandbox  {world.starface.control_url}/control\n"
        f"                    token file {world.starface.control_token_file}\n"
        f"  CA bundle         {world.settings.extra_ca_file}\n"
        f"  admin console     {console_base_url(world.settings)}  sign in with Microsoft as "
        f"{CONSOLE_ADMIN}, password {world.password(CONSOLE_ADMIN)}\n"
        f"                    (employees enrol at {console_base_url(world.settings)}/enrol, e.g. "
        f"{world.people[0].email}, password {world.password(world.people[0].email)})\n"
        "  users            "
        + ", ".join(
            f"{p.first} {p.login} <{p.email}> Teams id {world.entra_ids[p.login]}" for p in world.people
        )
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=5)
        if not stop.is_set() and sys.stdout.isatty():
            print("\n" + await world.table(), flush=True)
