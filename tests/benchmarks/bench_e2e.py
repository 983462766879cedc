"""End-to-end benchmark: encrypted Graph notification in -> DND applied in the STARFACE sandbox.

Run by hand (never collected by pytest):

    .venv/bin/python tests/benchmarks/bench_e2e.py [--users 2000] [--seconds 20] [--rates 100,1000]
    .venv/bin/python tests/benchmarks/bench_e2e.py --users 20 --seconds 3 --rates 5,10   # smoke run

Setup (loopback only, everything bounded in count and time, everything stopped at the end):
  * core A (the first allowed core): the bridge, ``presence-bridge serve --role all`` as a
    subprocess under ``taskset``, with its web tier on HTTPS (certificate from a CA of this script);
  * core B (the last allowed core): ``presence-bridge sandbox graph`` and ``presence-bridge sandbox
    starface`` as subprocesses, the embedded Valkey, the load generator (its own process) and this
    orchestrating process, so the sandboxes' work (encrypting notifications, serving UCI) and Redis
    do not count against the bridge's core.
  * N users with matching e-mails in both sandboxes, all in one STARFACE group, ceil(N/650) Graph
    service accounts signed in, STARFACE credentials stored; the script waits until every user is
    linked, subscribed and has a first STARFACE state.

Each phase flips users' Teams presence (Available/Available <-> Busy/InACall: DND off/on) through
the Graph sandbox's control API at a fixed rate (open loop), round-robin over the users so a user
gets one change every N/rate seconds.  Graph turns each change into an encrypted rich notification
to the bridge.  After each phase the script waits until STARFACE shows every user's last state and
then reads:
  * the STARFACE sandbox's DND history (ground truth of what was applied, and when),
  * the bridge's DecisionLog from Redis (``latency_ms``: notification received -> change applied),
  * the Graph sandbox's delivery log (notification items delivered, failed deliveries),
  * CPU time of each process and of each core (/proc).
Throughput per core is compared with a bare loop of RSA-OAEP-SHA1 decryptions (2048-bit key) on the
bridge's core, which is the floor: every notification item costs one such decryption.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import multiprocessing
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from service.bridge.decisions import DecisionRecord  # noqa: E402
from service.bridge.identity import IdentityStore  # noqa: E402
from service.core import keys  # noqa: E402
from service.core.embedded import EmbeddedValkey, free_port  # noqa: E402
from service.core.secretbox import SecretBox  # noqa: E402
from service.core.settings import Settings  # noqa: E402
from service.core.storage import connect_worker  # noqa: E402
from service.core.tls import client_context  # noqa: E402
from service.sandbox.tls import CertificateAuthority  # noqa: E402
from service.starface.credentials import CredentialStore  # noqa: E402
from subscriptions.shards import CAPACITY, accounts_needed  # noqa: E402
from subscriptions.tokens import Tokens  # noqa: E402
from tests.fixtures.cluster import EmbeddedCluster  # noqa: E402

CORES = sorted(os.sched_getaffinity(0))
BRIDGE_CORE = CORES[0]
SANDBOX_CORE = CORES[-1]
CLK_TCK = os.sysconf("SC_CLK_TCK")
DOMAIN = "bench.example"
GROUP = "Bench"
ADMIN_LOGIN = "0000"
SESSION = "desktop"
# Index 0 and 1: the two Teams states a user flips between, and the DND each must give.
STATES: tuple[tuple[str, str], ...] = (("Available", "Available"), ("Busy", "InACall"))
DND_FOR_STATE = (False, True)
TEXT_FOR_STATE = ("Verfügbar", "Im Gespräch")


def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:,.0f} ms"


# -- the floor ----------------------------------------------------------------------------------


def bare_decrypt_rate(seconds: float) -> tuple[float, float]:
    """RSA-OAEP-SHA1 decryptions with a 2048-bit key (as service.graph.certificates makes) on this core.

    Returns (per wall-clock second, per CPU second of this thread); the second does not depend on
    what else the machine runs, and is what the bridge's changes per CPU-second are compared with.
    """
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)  # noqa: S303
    wrapped = [key.public_key().encrypt(secrets.token_bytes(32), oaep) for _ in range(64)]
    done, started, cpu_started = 0, time.perf_counter(), time.thread_time()
    while time.perf_counter() - started < seconds:
        key.decrypt(wrapped[done % len(wrapped)], oaep)
        done += 1
    return done / (time.perf_counter() - started), done / (time.thread_time() - cpu_started)


# -- CPU accounting -----------------------------------------------------------------------------


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB (VmRSS)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return math.nan


def core_times() -> dict[int, tuple[float, float, float]]:
    """Per core: (busy, total, irq + softirq) jiffies since boot."""
    result: dict[int, tuple[float, float, float]] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        numbers = [float(v) for v in values[:8]]
        idle = numbers[3] + numbers[4]
        result[int(name[3:])] = (sum(numbers) - idle, sum(numbers), numbers[5] + numbers[6])
    return result


@dataclass
class CpuSample:
    at: float
    processes: dict[str, float]
    cores: dict[int, tuple[float, float, float]]


def cpu_sample(pids: dict[str, int]) -> CpuSample:
    return CpuSample(time.monotonic(), {n: process_cpu_seconds(p) for n, p in pids.items()}, core_times())


def cpu_between(a: CpuSample, b: CpuSample) -> tuple[dict[str, float], dict[int, float], dict[int, float]]:
    """Share of one core each process used, each core's busy share and its interrupt share."""
    wall = max(1e-9, b.at - a.at)
    processes = {n: (b.processes[n] - a.processes[n]) / wall for n in a.processes}
    cores, irqs = {}, {}
    for core, (busy, total, irq) in b.cores.items():
        busy0, total0, irq0 = a.cores.get(core, (0.0, 0.0, 0.0))
        cores[core] = (busy - busy0) / max(1e-9, total - total0)
        irqs[core] = (irq - irq0) / max(1e-9, total - total0)
    return processes, cores, irqs


# -- the load generator (its own process, on the sandbox core) ----------------------------------


async def _open_loop(
    base: str, token: str, ca_file: str, ids: list[str], states: list[int], rate: float, seconds: float
) -> dict[str, Any]:
    """Flip users round-robin at a fixed rate; one user's changes are sent strictly in order."""
    total = max(1, int(rate * seconds))
    latencies: list[float] = []
    late: list[float] = []
    errors: dict[str, int] = {}
    locks = [asyncio.Lock() for _ in ids]
    headers = {"Authorization": f"Bearer {token}"}
    connector = aiohttp.TCPConnector(ssl=client_context(ca_file), limit=64)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:

        async def flip(user: int, scheduled: float) -> None:
            async with locks[user]:
                states[user] ^= 1
                availability, activity = STATES[states[user]]
                late.append(time.perf_counter() - scheduled)
                try:
                    async with http.put(
                        f"{base}/_sandbox/users/{ids[user]}/sessions/{SESSION}",
                        json={"availability": availability, "activity": activity},
                        headers=headers,
                    ) as response:
                        await response.read()
                        if response.status != 200:
                            errors[str(response.status)] = errors.get(str(response.status), 0) + 1
                except (aiohttp.ClientError, TimeoutError) as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                # From when it should have been sent: a slow sandbox cannot hide its backlog.
                latencies.append(time.perf_counter() - scheduled)

        wall_start = time.time()
        start = time.perf_counter()
        tasks = []
        for i in range(total):
            scheduled = start + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(flip(i % len(ids), scheduled)))
        issued = time.perf_counter() - start
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    return {
        "sent": total,
        "failed": sum(errors.values()),
        "errors": errors,
        "wall_start": wall_start,
        "wall_end": wall_start + elapsed,
        "issued_seconds": issued,
        "elapsed": elapsed,
        "put_p50": pct(latencies, 0.5),
        "put_p99": pct(latencies, 0.99),
        "late_p99": pct(late, 0.99),
        "states": states,
    }


def _generator(
    base: str,
    token: str,
    ca_file: str,
    ids: list[str],
    states: list[int],
    rate: float,
    seconds: float,
    out: Any,
) -> None:
    os.sched_setaffinity(0, {SANDBOX_CORE})
    out.put(asyncio.run(_open_loop(base, token, ca_file, ids, states, rate, seconds)))


def run_generator(
    base: str, token: str, ca_file: Path, ids: list[str], states: list[int], rate: float, seconds: float
) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    queue: Any = ctx.Queue()
    proc = ctx.Process(
        target=_generator, args=(base, token, str(ca_file), ids, states, rate, seconds, queue), daemon=True
    )
    proc.start()
    try:
        result: dict[str, Any] = queue.get(timeout=seconds * 4 + 120)
    finally:
        proc.join(timeout=30)
        if proc.is_alive():
            proc.kill()
    return result


# -- the world ----------------------------------------------------------------------------------


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@dataclass
class World:
    workdir: Path
    users: int
    coalesce_seconds: float
    logins: list[str] = field(default_factory=list)
    entra_ids: list[str] = field(default_factory=list)
    passwords: dict[str, str] = field(default_factory=dict)
    children: list[Child] = field(default_factory=list)
    valkey: EmbeddedValkey | None = None
    # --cluster: three Valkey masters instead of one server
    cluster: EmbeddedCluster | None = None
    partitions: int = 1
    graph_base: str = ""
    graph_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    starface_base: str = ""
    starface_control: str = ""
    starface_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    bundle: Path | None = None
    bridge: Child | None = None
    # --split-roles: web, worker and scheduler as processes of their own (all on the bridge core)
    roles: tuple[str, ...] = ("all",)
    bridges: list[Child] = field(default_factory=list)
    http: aiohttp.ClientSession | None = None
    redis: Any = None

    @property
    def graph_ca(self) -> Path:
        return self.workdir / "graph" / "ca.crt"

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Child:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, cwd=self.workdir, env=env or dict(os.environ)
            )
        child = Child(name, proc, log)
        self.children.append(child)
        return child

    async def control(self, which: str, method: str, path: str, body: Any = None) -> Any:
        assert self.http is not None
        if which == "graph":
            url, token = f"{self.graph_base}/_sandbox{path}", self.graph_token
        else:
            url, token = f"{self.starface_control}/control{path}", self.starface_token
        async with self.http.request(
            method, url, json=body, headers={"Authorization": f"Bearer {token}"}
        ) as response:
            text = await response.text()
            if response.status >= 400:
                raise RuntimeError(f"{which} control {method} {path}: {response.status} {text[:300]}")
            return json.loads(text) if text else None

    async def wait_for(
        self, what: str, check: Callable[[], Awaitable[tuple[bool, str]]], within: float
    ) -> None:
        deadline = time.monotonic() + within
        seen = "nothing yet"
        while time.monotonic() < deadline:
            for child in self.children:
                if child.proc.poll() is not None:
                    raise RuntimeError(f"{child.name} exited ({child.proc.returncode}):\n{child.tail()}")
            try:
                ok, seen = await check()
            except (aiohttp.ClientError, OSError, RuntimeError) as exc:
                ok, seen = False, f"{type(exc).__name__}: {exc}"
            if ok:
                return
            await asyncio.sleep(0.5)
        raise RuntimeError(f"timed out waiting for {what}; last seen: {seen}")

    # -- start ---------------------------------------------------------------------------------

    async def start(self, say: Callable[[str], None]) -> None:
        cli = [sys.executable, "-m", "service"]
        self.logins = [f"{n:04d}" for n in range(1, self.users + 1)]
        self.entra_ids = [str(uuid.uuid4()) for _ in self.logins]
        self.passwords = {who: secrets.token_urlsafe(12) for who in [ADMIN_LOGIN, *self.logins]}
        accounts = [f"svc-bench{n:02d}@{DOMAIN}" for n in range(1, accounts_needed(self.users) + 1)]
        self.passwords.update({a: secrets.token_urlsafe(16) for a in accounts})

        # Our own CA for the bridge's public endpoint: both sandboxes are told to trust it.
        ca = CertificateAuthority("bench bridge CA")
        bridge_ca = ca.write_ca(self.workdir / "bridge-ca.crt")
        cert_file, key_file = ca.issue(["127.0.0.1", "localhost"]).write(self.workdir / "tls", "bridge")

        # Children inherit this process's affinity: the sandbox core.
        if self.cluster is not None:
            self.cluster.start()
        else:
            self.valkey = EmbeddedValkey(self.workdir / "valkey", appendonly=False)
            self.valkey.start()

        graph_port = free_port()
        graph_users = [
            {"displayName": f"Bench User {login}", "mail": f"user{login}@{DOMAIN}", "id": entra_id}
            for login, entra_id in zip(self.logins, self.entra_ids, strict=True)
        ]
        graph_users += [
            {"displayName": f"Presence sync {a}", "userPrincipalName": a, "password": self.passwords[a]}
            for a in accounts
        ]
        graph_users_file = self.workdir / "graph-users.json"
        graph_users_file.write_text(json.dumps(graph_users))
        tenant, client_id, client_secret = str(uuid.uuid4()), str(uuid.uuid4()), secrets.token_urlsafe(30)
        graph_dir = self.workdir / "graph"
        self.spawn(
            "graph-sandbox",
            [
                *cli,
                "sandbox",
                "graph",
                "--port",
                str(graph_port),
                "--state-dir",
                str(graph_dir),
                "--tenant-id",
                tenant,
                "--domain",
                DOMAIN,
                "--client-id",
                client_id,
                f"--client-secret={client_secret}",
                # one argument: a token may start with "-"
                f"--control-token={self.graph_token}",
                "--users-file",
                str(graph_users_file),
                "--service-accounts",
                "0",
                "--delivery-ca-file",
                str(bridge_ca),
                "--coalesce-seconds",
                str(self.coalesce_seconds),
            ],
        )
        self.graph_base = f"https://127.0.0.1:{graph_port}"

        starface_port, control_port = free_port(), free_port()
        starface_users = [
            {"login": ADMIN_LOGIN, "password": self.passwords[ADMIN_LOGIN], "email": f"admin@{DOMAIN}"}
        ] + [
            {
                "login": login,
                "password": self.passwords[login],
                "email": f"user{login}@{DOMAIN}",
                "firstName": "Bench",
                "familyName": f"User {login}",
            }
            for login in self.logins
        ]
        starface_users_file = self.workdir / "starface-users.json"
        starface_users_file.write_text(json.dumps(starface_users))
        starface_dir = self.workdir / "starface"
        self.spawn(
            "starface-sandbox",
            [
                *cli,
                "sandbox",
                "starface",
                "--port",
                str(starface_port),
                "--control-port",
                str(control_port),
                "--state-dir",
                str(starface_dir),
                f"--control-token={self.starface_token}",
                "--callback-ca-file",
                str(bridge_ca),
                "--users-file",
                str(starface_users_file),
            ],
        )
        self.starface_base = f"https://127.0.0.1:{starface_port}"
        self.starface_control = f"https://127.0.0.1:{control_port}"

        async def files_written() -> tuple[bool, str]:
            missing = [p for p in (graph_dir / "ca.crt", starface_dir / "ca.crt") if not p.exists()]
            return not missing, f"missing {missing}"

        await self.wait_for("the sandboxes' CA files", files_written, 60)
        self.bundle = self.workdir / "trusted-cas.pem"
        self.bundle.write_bytes((graph_dir / "ca.crt").read_bytes() + (starface_dir / "ca.crt").read_bytes())
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=client_context(str(self.bundle)), limit=32),
            timeout=aiohttp.ClientTimeout(total=60),
        )

        async def sandboxes_up() -> tuple[bool, str]:
            status = await self.control("graph", "GET", "/status")
            await self.control("starface", "GET", "")
            return True, str(status)

        await self.wait_for("both sandboxes serving", sandboxes_up, 60)
        await self.control("starface", "POST", "/groups", {"name": GROUP, "members": self.logins})
        # Every user has a Teams desktop client that is Available (no subscription yet: no notification).
        await self._gather(
            [
                self.control(
                    "graph",
                    "PUT",
                    f"/users/{entra_id}/sessions/{SESSION}",
                    {"availability": "Available", "activity": "Available"},
                )
                for entra_id in self.entra_ids
            ]
        )
        say(
            f"  sandboxes up: Graph {self.graph_base}, STARFACE {self.starface_base}; "
            f"{self.users} users seeded"
        )

        bridge_port = free_port()
        env = {
            "REDIS_URL": self.redis_url,
            "REDIS_PARTITIONS": str(self.partitions),
            "DATA_DIR": str(self.workdir / "data"),
            "PUBLIC_BASE_URL": f"https://127.0.0.1:{bridge_port}",
            "BRIDGE_SECRET_KEY": secrets.token_urlsafe(32),
            "AZURE_TENANT_ID": tenant,
            "AZURE_CLIENT_ID": client_id,
            "AZURE_CLIENT_SECRET": client_secret,
            "GRAPH_BASE_URL": self.graph_base,
            "AUTHORITY_BASE_URL": self.graph_base,
            "EXTRA_CA_FILE": str(self.bundle),
            "STARFACE_BASE_URL": self.starface_base,
            "STARFACE_ADMIN_LOGIN": ADMIN_LOGIN,
            "STARFACE_ADMIN_PASSWORD": self.passwords[ADMIN_LOGIN],
            "STARFACE_GROUP": GROUP,
            "GRAPH_SERVICE_ACCOUNTS": ",".join(accounts),
            "SCHEDULER_PASS_SECONDS": "2",
            "STARFACE_DIRECTORY_REFRESH_SECONDS": "5",
            "WORKER_CLAIM_IDLE_MS": "5000",
            "LOG_LEVEL": "WARNING",
        }
        settings = Settings.from_env(env, env_file=None)
        self.redis = connect_worker(self.redis_url)
        await CredentialStore(self.redis, SecretBox(settings.secret_key)).put_many(
            {login: self.passwords[login] for login in self.logins}
        )
        tokens = Tokens.from_settings(self.redis, settings)
        for account in accounts:
            await tokens.login_with_password(account, self.passwords[account])
        for role in self.roles:
            web = ["--port", str(bridge_port), "--tls-cert", str(cert_file), "--tls-key", str(key_file)]
            child = self.spawn(
                "bridge" if role == "all" else f"bridge-{role}",
                [
                    "taskset",
                    "-c",
                    str(BRIDGE_CORE),
                    *cli,
                    "serve",
                    "--role",
                    role,
                    *(web if role in ("all", "web") else []),
                ],
                env={**os.environ, **env},
            )
            self.bridges.append(child)
        self.bridge = self.bridges[0]
        say(
            f"  bridge ({', '.join(self.roles)}) started on core {BRIDGE_CORE} "
            f"(pids {', '.join(str(b.proc.pid) for b in self.bridges)}), {len(accounts)} account(s)"
        )

    async def _gather(self, jobs: Sequence[Awaitable[Any]], width: int = 32) -> list[Any]:
        limit = asyncio.Semaphore(width)

        async def one(job: Awaitable[Any]) -> Any:
            async with limit:
                return await job

        return await asyncio.gather(*(one(j) for j in jobs))

    async def ready(self, within: float) -> None:
        async def linked() -> tuple[bool, str]:
            links = await IdentityStore(self.redis).all()
            return len(links) == self.users, f"{len(links)} of {self.users} users linked"

        async def subscribed() -> tuple[bool, str]:
            subs = (await self.control("graph", "GET", "/subscriptions"))["value"]
            covered = {u for s in subs if s.get("delivering") for u in s.get("userIds", [])}
            missing = len(set(self.entra_ids) - covered)
            return missing == 0, f"{len(subs)} subscription(s), {missing} user(s) not covered"

        async def first_state() -> tuple[bool, str]:
            users = {u["login"]: u for u in (await self.control("starface", "GET", "/state"))["users"]}
            done = sum(
                1
                for login in self.logins
                if users[login]["statusText"] == TEXT_FOR_STATE[0] and users[login]["session"] is not None
            )
            return done == self.users, f"{done} of {self.users} users with a UCI session and 'Verfügbar'"

        await self.wait_for("every user linked to Teams", linked, within)
        await self.wait_for("every user covered by a delivering subscription", subscribed, within)
        await self.wait_for("every user's first STARFACE state", first_state, within)

    # -- measuring -----------------------------------------------------------------------------

    async def starface_dnd(self) -> dict[str, bool]:
        users = (await self.control("starface", "GET", "/state"))["users"]
        return {u["login"]: bool(u["dnd"]) for u in users}

    async def drain(self, expected: list[int], within: float) -> tuple[float, int]:
        """Seconds until STARFACE shows every user's last Teams state, and how many never did."""
        started = time.monotonic()
        mismatched = len(expected)
        while time.monotonic() - started < within:
            dnd = await self.starface_dnd()
            mismatched = sum(
                1
                for login, state in zip(self.logins, expected, strict=True)
                if dnd[login] != DND_FOR_STATE[state]
            )
            if mismatched == 0:
                break
            await asyncio.sleep(0.25)
        return time.monotonic() - started, mismatched

    async def dnd_history(self, since: float) -> list[float]:
        """Times (epoch s) of DND changes the bridge's UCI sessions made since ``since``."""

        async def one(login: str) -> list[float]:
            history = await self.control("starface", "GET", f"/users/{login}/history")
            return [
                float(e["at"]) for e in history["dnd"] if e["source"] == "uci" and float(e["at"]) >= since
            ]

        per_user = await self._gather([one(login) for login in self.logins])
        return sorted(t for times in per_user for t in times)

    async def decisions(self, since: float) -> tuple[list[DecisionRecord], int]:
        """Decisions since ``since`` with a STARFACE DND action, and users whose log may be cut."""
        records: list[DecisionRecord] = []
        truncated = 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for entra_id in self.entra_ids:
                pipe.lrange(keys.user_decisions(entra_id), 0, -1)
            lists = await pipe.execute()
        for raw in lists:
            parsed = [DecisionRecord.from_json(r) for r in raw]
            if parsed and len(parsed) >= 50 and min(r.at for r in parsed) >= since:
                truncated += 1
            records += [
                r for r in parsed if r.at >= since and any(a.startswith("STARFACE DND") for a in r.actions)
            ]
        return records, truncated

    async def deliveries(self, since_id: int) -> tuple[int, list[dict[str, Any]]]:
        log = (await self.control("graph", "GET", f"/deliveries?since={since_id}"))["value"]
        last = max((int(e["id"]) for e in log), default=since_id)
        return last, [e for e in log if e["kind"] == "change"]

    async def close(self) -> None:
        for child in reversed(self.children):
            child.stop()
        if self.redis is not None:
            await self.redis.aclose()
        if self.http is not None:
            await self.http.close()
        if self.valkey is not None:
            self.valkey.stop()
        if self.cluster is not None:
            self.cluster.stop()

    @property
    def redis_url(self) -> str:
        if self.cluster is not None:
            return self.cluster.url
        assert self.valkey is not None
        return self.valkey.url

    def store_pids(self) -> dict[str, int]:
        nodes = [self.valkey] if self.valkey is not None else self.cluster.nodes if self.cluster else []
        return {f"valkey{i or ''}": n.process.pid for i, n in enumerate(nodes) if n.process is not None}


# -- phases -------------------------------------------------------------------------------------


@dataclass
class Phase:
    rate: float
    seconds: float
    generator: dict[str, Any]
    achieved_put_rate: float
    delivered_items: int
    delivered_rate: float
    failed_deliveries: int
    applied_during: int
    applied_rate: float
    applied_total: int
    steady_rate: float
    steady_bridge_cpu: float
    collapsed: int
    drain_seconds: float
    not_converged: int
    latencies: list[float]
    truncated_logs: int
    cpu: dict[str, float]
    cores: dict[int, float]
    irqs: dict[int, float]

    @property
    def irq(self) -> float:
        """Share of the bridge's core spent in interrupts (loopback networking among others)."""
        return self.irqs.get(BRIDGE_CORE, math.nan)

    @property
    def foreign(self) -> float:
        """Share of the bridge's core used by processes that are not ours (other people's work)."""
        busy = self.cores.get(BRIDGE_CORE, math.nan)
        return max(0.0, busy - self.cpu.get("bridge", math.nan) - self.irq)

    @property
    def overloaded(self) -> bool:
        """Offered more than the bridge applied: a backlog was left when the load stopped."""
        return self.drain_seconds > 2.0 or self.not_converged > 0

    @property
    def gap(self) -> float:
        return 0.0 if self.rate <= 0 else len(self.generator["states"]) / self.rate


def _epoch(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def run_phase(
    world: World,
    states: list[int],
    rate: float,
    seconds: float,
    drain_within: float,
    pids: dict[str, int],
    say: Callable[[str], None],
) -> Phase:
    last_delivery, _ = await world.deliveries(0)
    before = cpu_sample(pids)
    generator = await asyncio.to_thread(
        run_generator,
        world.graph_base,
        world.graph_token,
        world.graph_ca,
        world.entra_ids,
        states,
        rate,
        seconds,
    )
    after = cpu_sample(pids)
    drain_seconds, not_converged = await world.drain(generator["states"], drain_within)
    start, end = float(generator["wall_start"]), float(generator["wall_end"])
    cpu, cores, irqs = cpu_between(before, after)
    if "bridge" not in cpu:  # split roles: the bridge is the sum of its processes
        cpu["bridge"] = sum(v for n, v in cpu.items() if n.startswith("bridge-"))

    _, changes = await world.deliveries(last_delivery)
    delivered = [e for e in changes if e["outcome"] == "delivered"]
    delivered_items = sum(int(e["items"]) for e in delivered)
    in_window = sum(int(e["items"]) for e in delivered if start <= _epoch(e["at"]) <= end)
    failed = sum(1 for e in changes if e["outcome"] != "delivered")

    applied = await world.dnd_history(start)
    during = sum(1 for t in applied if t <= end)
    # Steady window: skip the first quarter (at most 5 s) while queues fill.
    warm = min(5.0, (end - start) / 4)
    steady = sum(1 for t in applied if start + warm <= t <= end)
    steady_rate = steady / max(1e-9, end - start - warm)
    records, truncated = await world.decisions(start)
    latencies = [r.latency_ms for r in records if r.latency_ms is not None and r.trigger == "presence"]
    if os.environ.get("BENCH_SHOW_SLOWEST"):
        # The decisions behind the tail, to tell a queue from a stall from a retry.
        timed = [r for r in records if r.latency_ms is not None and r.trigger == "presence"]
        for record in sorted(timed, key=lambda r: -(r.latency_ms or 0))[
            : int(os.environ["BENCH_SHOW_SLOWEST"])
        ]:
            say(f"    slow (at +{record.at - start:.2f} s):\n" + record.format())
    ok_puts = int(generator["sent"]) - int(generator["failed"])
    phase = Phase(
        rate=rate,
        seconds=seconds,
        generator=generator,
        achieved_put_rate=ok_puts / max(1e-9, float(generator["elapsed"])),
        delivered_items=delivered_items,
        delivered_rate=in_window / max(1e-9, end - start),
        failed_deliveries=failed,
        applied_during=during,
        applied_rate=during / max(1e-9, end - start),
        applied_total=len(applied),
        steady_rate=steady_rate,
        steady_bridge_cpu=cpu.get("bridge", math.nan),
        collapsed=max(0, ok_puts - len(applied)),
        drain_seconds=drain_seconds,
        not_converged=not_converged,
        latencies=latencies,
        truncated_logs=truncated,
        cpu=cpu,
        cores=cores,
        irqs=irqs,
    )
    say(
        f"  offered {rate:,.0f}/s for {seconds:.0f} s (one change per user every {phase.gap:.1f} s): "
        f"PUTs {ok_puts:,} ok / {generator['sent']:,} at {phase.achieved_put_rate:,.0f}/s "
        f"(PUT p50 {ms(generator['put_p50'] * 1000)}, p99 {ms(generator['put_p99'] * 1000)}); "
        f"Graph delivered {delivered_items:,} items ({phase.delivered_rate:,.0f}/s during load), "
        f"{failed} failed deliveries"
    )
    say(
        f"    STARFACE DND changes: {during:,} during load ({phase.applied_rate:,.0f}/s; steady "
        f"{steady_rate:,.0f}/s), {len(applied):,} in all; collapsed {phase.collapsed:,}; "
        f"drained in {drain_seconds:.1f} s"
        + (f", {not_converged} users NOT converged" if not_converged else "")
    )
    say(
        f"    latency received->applied (n={len(latencies):,}): p50 {ms(pct(latencies, 0.5))}, "
        f"p99 {ms(pct(latencies, 0.99))}, max {ms(max(latencies, default=math.nan))}"
        + (f"; {truncated} user logs may be cut at 50" if truncated else "")
    )
    say(
        "    CPU (share of one core): "
        + ", ".join(f"{n} {v:.0%}" for n, v in cpu.items())
        + "; cores "
        + ", ".join(f"{c}: {v:.0%}" for c, v in sorted(cores.items()))
        + f" busy (core {BRIDGE_CORE}: interrupts {phase.irq:.0%}, other processes {phase.foreign:.0%})"
    )
    return phase


async def run_burst(
    world: World,
    states: list[int],
    count: int,
    drain_within: float,
    pids: dict[str, int],
    say: Callable[[str], None],
) -> list[int]:
    """``count`` users change within about a second (a meeting that starts at 9:00 for all of
    them); reports how long until STARFACE shows every one of them, counted from the first
    change offered to the last DND applied."""
    before = cpu_sample(pids)
    # Only the first ``count`` users flip: the generator goes round-robin, one change each.
    generator = await asyncio.to_thread(
        run_generator,
        world.graph_base,
        world.graph_token,
        world.graph_ca,
        world.entra_ids[:count],
        states[:count],
        float(count),
        1.0,
    )
    states = list(generator["states"]) + states[count:]
    _, not_converged = await world.drain(states, drain_within)
    after = cpu_sample(pids)
    cpu, _, _ = cpu_between(before, after)
    start = float(generator["wall_start"])
    applied = await world.dnd_history(start)
    last = max(applied, default=math.nan)
    records, _ = await world.decisions(start)
    latencies = [r.latency_ms for r in records if r.latency_ms is not None and r.trigger == "presence"]
    say(
        f"  {int(generator['sent']) - int(generator['failed']):,} changes offered in "
        f"{float(generator['elapsed']):.1f} s; {len(applied):,} DND changes applied; the last "
        f"{last - start:.1f} s after the first change was offered"
        + (f"; {not_converged} users NOT converged" if not_converged else "")
    )
    say(
        f"    latency received->applied: p50 {ms(pct(latencies, 0.5))}, p99 {ms(pct(latencies, 0.99))}; "
        "CPU (share of one core over the burst and its drain): "
        + ", ".join(f"{n} {v:.0%}" for n, v in cpu.items())
    )
    return states


# -- main ---------------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> int:
    def say(text: str) -> None:
        print(text, flush=True)

    load_before = os.getloadavg()
    if len(CORES) < 2:
        say(f"WARNING: only core(s) {CORES} allowed: bridge and sandboxes share a core")
    os.sched_setaffinity(0, {BRIDGE_CORE})
    floor_wall, floor = bare_decrypt_rate(args.floor_seconds)
    os.sched_setaffinity(0, {SANDBOX_CORE})
    say(
        f"bare RSA-OAEP-SHA1 decryptions (2048-bit key) on core {BRIDGE_CORE}: {floor_wall:,.0f}/s "
        f"wall clock, {floor:,.0f} per CPU-second"
    )

    workdir = Path(tempfile.mkdtemp(prefix="pb-bench-e2e-"))
    world = World(
        workdir,
        args.users,
        args.coalesce_seconds,
        cluster=EmbeddedCluster(workdir / "cluster") if args.cluster else None,
        partitions=args.partitions,
        roles=("web", "worker", "scheduler") if args.split_roles else ("all",),
    )
    phases: list[Phase] = []
    try:
        say(f"setting up {args.users} users in {workdir} ...")
        setup_started = time.monotonic()
        await world.start(say)
        await world.ready(args.ready_seconds)
        say(f"  ready after {time.monotonic() - setup_started:.1f} s")
        assert world.bridge is not None
        pids = {
            **{c.name: c.proc.pid for c in world.children},
            **world.store_pids(),
        }
        states = [0] * args.users
        for rate in args.rates:
            say(f"phase at {rate:,.0f} changes/s offered:")
            phase = await run_phase(world, states, rate, args.seconds, args.drain_seconds, pids, say)
            states = list(phase.generator["states"])
            phases.append(phase)
        if args.burst:
            say(f"burst: {args.burst:,} users change at once:")
            burst = await run_burst(world, states, args.burst, args.drain_seconds, pids, say)
            states = burst
        say(
            "resident memory (RSS) of the bridge: "
            + ", ".join(f"{b.name} {rss_mb(b.proc.pid):,.0f} MB" for b in world.bridges)
            + f" with {args.users:,} users"
        )
    finally:
        await world.close()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    load_after = os.getloadavg()
    summary(args, (floor_wall, floor), phases, load_before, load_after)
    return 0


def summary(
    args: argparse.Namespace,
    floors: tuple[float, float],
    phases: list[Phase],
    load_before: tuple[float, float, float],
    load_after: tuple[float, float, float],
) -> None:
    floor_wall, floor = floors
    over = [p for p in phases if p.overloaded]
    top = max(over or phases, key=lambda p: p.steady_rate)
    per_cpu_second = top.steady_rate / top.steady_bridge_cpu if top.steady_bridge_cpu > 0 else math.nan
    lines = [
        "",
        "=" * 100,
        "END TO END: encrypted Graph notification in -> DND applied in the STARFACE sandbox",
        f"setup: {len(CORES)} core(s) {CORES}; bridge (serve --role all) on core {BRIDGE_CORE}; Graph and "
        f"STARFACE sandboxes, embedded Valkey, load generator and orchestrator on core {SANDBOX_CORE}",
        f"       {args.users} users ({accounts_needed(args.users)} service account(s), {CAPACITY} users per "
        f"subscription), {args.seconds:.0f} s per phase, Graph coalescing window {args.coalesce_seconds} s, "
        "flips Available/Available <-> Busy/InACall (DND off/on, 2 UCI writes each)",
        "       columns: 'bridge' = the bridge process's share of core "
        f"{BRIDGE_CORE}, 'irq' = that core's interrupt time (loopback networking), 'other' = foreign "
        f"processes on it, 'core{SANDBOX_CORE}' = busy share of the sandbox core (all processes)",
        f"       load average before {load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f}, "
        f"after {load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f}",
        f"floor: bare RSA-OAEP-SHA1 decryption loop on core {BRIDGE_CORE}: {floor:,.0f} per CPU-second "
        f"(= one whole core; {floor_wall:,.0f}/s of wall clock while sharing the core with others)",
        "",
        f"{'offered/s':>10} {'PUT/s':>7} {'notif/s':>8} {'applied/s':>9} {'steady/s':>8} {'bridge':>6} "
        f"{'irq':>4} {'other':>5} {'core' + str(SANDBOX_CORE):>6} "
        f"{'p50':>9} {'p99':>9} {'max':>9} {'n':>7} {'collapsed':>9} "
        f"{'drain':>6}",
    ]
    for p in phases:
        lines.append(
            f"{p.rate:>10,.0f} {p.achieved_put_rate:>7,.0f} {p.delivered_rate:>8,.0f} "
            f"{p.applied_rate:>9,.0f} "
            f"{p.steady_rate:>8,.0f} {p.cpu.get('bridge', math.nan):>6.0%} "
            f"{p.irq:>4.0%} {p.foreign:>5.0%} {p.cores.get(SANDBOX_CORE, math.nan):>6.0%} "
            f"{ms(pct(p.latencies, 0.5)):>9} "
            f"{ms(pct(p.latencies, 0.99)):>9} {ms(max(p.latencies, default=math.nan)):>9} "
            f"{len(p.latencies):>7,} {p.collapsed:>9,} {p.drain_seconds:>5.1f}s"
        )
    lines += [
        "",
        f"throughput: {top.steady_rate:,.0f} DND changes/s applied on one core, steady part of the "
        f"{top.rate:,.0f}/s phase"
        + (
            " (the best phase driven above capacity, i.e. with a backlog left at its end)"
            if over
            else " (NO phase was driven above capacity: this is a lower bound)"
        ),
        f"            = {top.steady_rate / floor:.3f} x the bare decryption loop on one core "
        f"({floor:,.0f}/s of CPU time); the bridge used {top.steady_bridge_cpu:.0%} of its core "
        f"(interrupts {top.irq:.0%}, other processes {top.foreign:.0%})",
        f"            per bridge CPU-second: {per_cpu_second:,.0f} changes = {per_cpu_second / floor:.3f} x "
        f"the loop's {floor:,.0f} decryptions per CPU-second"
        + (
            ""
            if top.steady_bridge_cpu >= 0.9 or not over
            else " (the bridge did not get its whole core: other processes took it)"
            if top.steady_bridge_cpu + top.irq + top.foreign >= 0.9
            else " (the bridge did not use its whole core: it was held up by waiting, not by CPU)"
        ),
    ]
    noisy = [p for p in phases if p.foreign > 0.15]
    if noisy:
        lines.append(
            "NOTE: the machine was not quiet: other processes took "
            + ", ".join(f"{p.foreign:.0%}" for p in noisy)
            + f" of core {BRIDGE_CORE} in the "
            + ", ".join(f"{p.rate:,.0f}/s" for p in noisy)
            + " phase(s); rates and latencies there are pessimistic"
        )
    for p in phases:
        if p.achieved_put_rate < 0.95 * p.rate or p.delivered_rate < 0.95 * p.rate:
            lines.append(
                f"NOTE: at {p.rate:,.0f}/s offered the sandboxes on core {SANDBOX_CORE} generated only "
                f"{p.achieved_put_rate:,.0f} PUTs/s and Graph delivered {p.delivered_rate:,.0f} items/s: "
                "that phase ran at the sandboxes' limit, not at the offered rate"
            )
        if p.not_converged:
            lines.append(
                f"NOTE: {p.not_converged} users had not converged {p.drain_seconds:.0f} s after the "
                f"{p.rate:,.0f}/s phase (drain bound); its latencies leave out what was still queued, so "
                "they are a lower bound, and later phases start with that backlog"
            )
    lines += [
        "latency = DecisionLog latency_ms of decisions that changed DND during and after each phase "
        "(notification received by the bridge -> last STARFACE write of that decision applied);",
        "collapsed = successful Teams changes minus DND changes the bridge applied (several changes of one "
        "user handled in one pass). With collapse, latency counts from the newest collapsed change.",
    ]
    lines.append("=" * 100)
    print("\n".join(lines), flush=True)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=2000, help="bridged users (default 2000)")
    parser.add_argument(
        "--seconds", type=float, default=20.0, help="duration of each load phase (default 20)"
    )
    parser.add_argument(
        "--rates",
        type=lambda text: [float(r) for r in text.split(",") if r.strip()],
        default=[100.0, 1000.0],
        help="offered changes/s, one phase each, comma-separated (default 100,1000)",
    )
    parser.add_argument("--coalesce-seconds", type=float, default=0.1, help="Graph sandbox window (0.1)")
    parser.add_argument("--floor-seconds", type=float, default=3.0, help="duration of the bare RSA loop")
    parser.add_argument("--ready-seconds", type=float, default=300.0, help="setup timeout (default 300)")
    parser.add_argument("--drain-seconds", type=float, default=120.0, help="drain timeout per phase (120)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs) afterwards")
    parser.add_argument(
        "--burst", type=int, default=0, help="after the phases, this many users change at once (e.g. 5000)"
    )
    parser.add_argument("--cluster", action="store_true", help="run on a three-master Valkey cluster")
    parser.add_argument(
        "--split-roles", action="store_true", help="web, worker and scheduler as three processes (one core)"
    )
    parser.add_argument("--partitions", type=int, default=1, help="REDIS_PARTITIONS of the bridge (1)")
    args = parser.parse_args(argv)
    if not 1 <= args.users <= 20_000:
        parser.error("--users must be 1..20000")
    if not 0 <= args.burst <= args.users:
        parser.error("--burst must be 0..--users")
    if not 0 < args.seconds <= 600 or not args.rates or any(not 0 < r <= 10_000 for r in args.rates):
        parser.error("--seconds must be in (0, 600] and each rate in (0, 10000]")
    if any(args.users / r < 2.0 for r in args.rates):
        print(
            "WARNING: some rate gives a user more than one change per 2 s; per-user collapse may hide work",
            flush=True,
        )
    return args


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
