"""What one ``presence-bridge serve`` process runs, by role, and how it stops.

- ``web``: the public endpoints (Graph notifications and lifecycle, STARFACE callbacks, health).
- ``worker``: presence changes into observed state, STARFACE call events, the reconciler, and the
  per-user UCI sessions (keepAlive, re-login).  Any number of workers share the work via Redis.
- ``scheduler``: the STARFACE directory refresh and the Graph subscriptions (create, renew,
  lifecycle, resync).  Any number may run; a Redis lease makes one of them act.
- ``all``: every role in one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from service.bridge.confirm import Confirmer
from service.bridge.due import Schedule
from service.bridge.identity import link_resolved
from service.bridge.mapping import Mapping, load_mapping, to_toml
from service.bridge.mapping_store import MappingFollower, MappingStore
from service.bridge.readback import ReadBack
from service.bridge.reconciler import GRAPH, STARFACE, Reconciler
from service.bridge.streams import PartitionedConsumer
from service.bridge.worker import ChangeListener, PresenceWorker
from service.core import heartbeat, keys
from service.core.clock import Clock, SystemClock
from service.core.partitions import adopt as adopt_partitions
from service.core.settings import Settings
from service.core.storage import connect_worker
from service.core.tls import client_context
from service.graph.client import GraphClient
from service.graph.teams import GraphTeams
from service.ops import gauges
from service.starface.directory import DirectoryStore
from service.starface.rest import RestClient, open_http
from service.starface.sessions import SessionManager
from service.web import starface_callback as callback
from service.web.app import create_app
from service.web.server import AppServer
from subscriptions.resync import Resync
from subscriptions.scheduler import build_scheduler
from subscriptions.tokens import Tokens
from subscriptions.users import Resolution

log = logging.getLogger(__name__)


@dataclass
class WebOptions:
    host: str = "127.0.0.1"
    port: int = 8080
    tls_cert: str | None = None
    tls_key: str | None = None


@dataclass
class Runtime:
    """Builds the parts of the given role on start and closes everything it opened on stop."""

    settings: Settings
    redis_url: str
    role: str = "all"
    web: WebOptions = field(default_factory=WebOptions)
    mapping: Mapping | None = None
    heartbeat_dir: Path = heartbeat.DEFAULT_DIR
    # Tests run the bridge on a sandbox's faster clock; production uses the wall clock.
    clock: Clock = field(default_factory=SystemClock)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    reconciler: Reconciler | None = None
    server: AppServer | None = None
    console: AppServer | None = None
    _closers: list[Callable[[], Awaitable[Any]]] = field(default_factory=list)
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    def _spawn(self, name: str, work: Coroutine[Any, Any, Any]) -> None:
        self._tasks.append(asyncio.create_task(work, name=name))

    async def start(self) -> None:
        roles = heartbeat.ROLES if self.role == "all" else (self.role,)
        self._spawn("heartbeat", heartbeat.run(self.heartbeat_dir, roles, self.stop))
        if self.role in ("all", "web"):
            self._start_web()
            if self.settings.console_port:
                self._start_console()
        if self.role in ("all", "worker", "scheduler"):
            redis = connect_worker(self.redis_url)
            self._closers.append(redis.aclose)
            http = open_http(self.settings.extra_ca_file)
            self._closers.append(http.close)
            if self.role in ("all", "worker"):
                await self._start_worker(redis, http)
            if self.role in ("all", "scheduler"):
                self._start_scheduler(redis, http)
            self._spawn("metrics-gauges", gauges.gauge_loop(redis, self.settings, self.stop))

    def _start_web(self) -> None:
        self.server = AppServer(
            create_app(self.settings, redis_url=self.redis_url, extra_routes=callback.routes()),
            host=self.web.host,
            port=self.web.port,
            log_level=self.settings.log_level.lower(),
            cert_file=self.web.tls_cert,
            key_file=self.web.tls_key,
            header_seconds=float(self.settings.web_header_timeout_seconds),
            timeout_keep_alive=self.settings.web_keepalive_seconds,
        )
        self._spawn("web", self.server.serve())

    def _start_console(self) -> None:
        from service.console.app import console_base_url, create_console_app

        port = self.settings.console_port
        assert port is not None
        self.console = AppServer(
            create_console_app(self.settings, self.redis_url),
            host=self.settings.console_host,
            port=port,
            log_level=self.settings.log_level.lower(),
            header_seconds=float(self.settings.web_header_timeout_seconds),
            timeout_keep_alive=self.settings.web_keepalive_seconds,
        )
        self._spawn("console", self.console.serve())
        log.info("admin console at %s", console_base_url(self.settings))

    async def _start_worker(self, redis: aioredis.Redis, http: aiohttp.ClientSession) -> None:
        settings = self.settings
        partitions = settings.partitions
        read = await adopt_partitions(redis, partitions)
        mapping = self.mapping or load_mapping(settings.mapping_file)
        read_back = ReadBack(redis, partitions, clock=self.clock.now) if settings.starface_read_back else None
        sessions = SessionManager(redis, settings, http, read_back=read_back.check if read_back else None)
        tokens = Tokens.from_settings(redis, settings)
        # Few attempts: the reconciler retries a user with its own backoff, never blocking others.
        graph = GraphClient(
            settings.graph_base_url,
            ssl_context=client_context(settings.extra_ca_file),
            max_attempts=2,
            timeout=10,
            clock=self.clock,
            # A longer Retry-After gives the user back and schedules it then (GraphThrottled):
            # sleeping inside the reconcile would outlive the claim on the user.
            max_wait=2.0,
        )
        self._closers.append(graph.close)
        directory = DirectoryStore(redis)

        teams = GraphTeams(graph, tokens.app_token, settings.client_id, clock=self.clock)
        self.reconciler = Reconciler(
            redis,
            mapping=mapping,
            starface=sessions,
            teams=teams,
            groups=directory.groups,
            partitions=partitions,
            clock=self.clock.now,
            presence_seconds=settings.teams_presence_minutes * 60,
            concurrency=settings.reconcile_concurrency,
            dnd_policy=settings.starface_dnd_policy,
            rewrites_per_hour=settings.starface_rewrites_per_hour,
        )
        # When the PBX answers again after an outage, everyone who waited is due at once.
        sessions.circuit.on_close.append(functools.partial(self.reconciler.back, STARFACE))
        teams.circuit.on_close.append(functools.partial(self.reconciler.back, GRAPH))
        self._spawn("graph-probe", _probe_while_open(teams, self.stop))
        await self._follow_mapping(redis, mapping)
        listeners: list[ChangeListener] = [self.reconciler.on_presence]
        if settings.presence_confirm_seconds > 0:
            # Changes without sequenceNumber are confirmed by a read, so a late retry of an old
            # state is corrected within seconds (service/bridge/confirm.py).
            reads = Resync(
                redis,
                graph,
                tokens.app_token,
                partitions=partitions,
                stream_maxlen=settings.presence_stream_maxlen,
            )
            confirmer = Confirmer(
                redis, reads.sweep, delay_seconds=settings.presence_confirm_seconds, clock=self.clock.now
            )
            listeners.append(confirmer.on_presence)
            self._spawn("presence-confirm", confirmer.run(self.stop))
        # The streams of every partition still read (``read``), the due-set of the current ones.
        worker = PresenceWorker(redis, settings, read, listeners=listeners)
        calls = PartitionedConsumer(
            redis,
            read.call_streams(),
            keys.CALL_GROUP,
            self.reconciler.handle_calls,
            batch=settings.worker_batch,
            claim_idle_ms=settings.worker_claim_idle_ms,
            max_deliveries=settings.worker_max_deliveries,
            dead_letter_max_entries=settings.dead_letter_max_entries,
            dead_letter_max_age_seconds=settings.dead_letter_max_age_days * 86_400,
        )
        await worker.start()
        await calls.also_drain_if_present(keys.LEGACY_CALL_STREAM)
        await calls.ensure_group()
        moved = await self.reconciler.schedule.rehome(
            [keys.LEGACY_RECONCILE_DUE, keys.LEGACY_RECONCILE_INFLIGHT], read, self.clock.now()
        )
        if moved:
            log.info("moved %d due users to their partitions (the partition count changed)", moved)
        self._spawn("presence-worker", worker.run(self.stop.is_set))
        self._spawn("call-events", calls.run_forever(self.stop.is_set))
        self._spawn("reconciler", self.reconciler.run(self.stop.is_set))
        self._spawn("uci-sessions", sessions.run(self.stop, logins=directory.versioned_logins))
        self._spawn("worker-heartbeat", self._heartbeat(redis, worker.consumer.name))
        self._closers.append(lambda: self._last_one_out(redis, worker.consumer.name, sessions))
        log.info(
            "worker %s: presence, call events, reconciler and UCI sessions running", worker.consumer.name
        )

    async def _follow_mapping(self, redis: aioredis.Redis, starting: Mapping) -> None:
        """Apply the saved mapping version now and every later one within a second, no restart."""
        store = MappingStore(redis)
        if self.settings.mapping_file and self.mapping is None:
            text = await asyncio.to_thread(Path(self.settings.mapping_file).read_text, encoding="utf-8")
        else:
            text = to_toml(starting)
        version = await store.seed(text, source=starting.source)
        reconciler = self.reconciler
        assert reconciler is not None

        async def apply(mapping: Mapping) -> None:
            reconciler.mapping = mapping
            if await reconciler.adopt_mapping():
                log.info("the mapping changed (%s): every user is reconciled again", mapping.source)

        follower = MappingFollower(store, apply)
        await follower.poll()
        log.info("applying mapping version %s (%s)", follower.applied, version.who)
        self._spawn("mapping", follower.run(self.stop))

    async def _heartbeat(self, redis: aioredis.Redis, name: str) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(aioredis.RedisError, OSError):
                await redis.zadd(keys.LIVE_WORKERS, {name: time.time()})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), timeout=heartbeat.WORKER_PERIOD_SECONDS)

    async def _last_one_out(self, redis: aioredis.Redis, name: str, sessions: SessionManager) -> None:
        """The UCI sessions are shared by all workers: only the last one to stop logs them out.

        A rolling restart never finds itself last, so users keep their sessions through it.
        """
        await redis.zrem(keys.LIVE_WORKERS, name)
        others = await redis.zcount(keys.LIVE_WORKERS, time.time() - heartbeat.WORKER_ALIVE_SECONDS, "+inf")
        if others:
            return
        try:
            done = await asyncio.wait_for(sessions.logout_all(), timeout=15)
        except TimeoutError:
            log.warning("last worker stopping: UCI logout did not finish in 15 s; the PBX expires the rest")
            return
        log.info("last worker stopping: logged %d UCI session(s) out", len(done))

    def _start_scheduler(self, redis: aioredis.Redis, http: aiohttp.ClientSession) -> None:
        from service.starface import directory as directory_module

        settings = self.settings
        store = DirectoryStore(redis)
        rest = RestClient.from_settings(http, settings)
        schedule = Schedule(redis, settings.partitions)

        async def linked(resolution: Resolution) -> None:
            changed = await link_resolved(redis, resolution.ids)
            if changed:
                log.info("linked %d Teams users to STARFACE logins", len(changed))
                await schedule.mark(changed, self.clock.now())

        scheduler = build_scheduler(
            settings,
            redis,
            store.emails,
            on_resolution=linked,
            pass_interval_seconds=settings.scheduler_pass_seconds,
            clock=self.clock,
        )
        self._closers.append(scheduler.close)
        self._spawn("directory", directory_module.run(rest, store, settings, self.stop))
        self._spawn("subscriptions", scheduler.run_forever(self.stop))
        log.info("scheduler: STARFACE directory and Graph subscriptions running")

    async def wait(self) -> None:
        """Until ``stop`` is set or a part fails; a failing part stops the whole process."""
        stopper = asyncio.create_task(self.stop.wait(), name="stop")
        done, _ = await asyncio.wait([stopper, *self._tasks], return_when=asyncio.FIRST_COMPLETED)
        failed = [t for t in done if t is not stopper and not t.cancelled() and t.exception() is not None]
        stopper.cancel()
        await self.close()
        if failed:
            raise failed[0].exception()  # type: ignore[misc]

    async def close(self) -> None:
        self.stop.set()
        for server in (self.server, self.console):
            if server is not None:
                server.request_stop()
        for task in self._tasks:
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout=15)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            except (asyncio.CancelledError, Exception) as exc:  # already reported by wait()
                log.debug("part %s ended with %r", task.get_name(), exc)
        for closer in reversed(self._closers):
            with contextlib.suppress(Exception):
                await closer()
        self._closers.clear()
        self._tasks.clear()


async def _probe_while_open(teams: GraphTeams, stop: asyncio.Event) -> None:
    """While Graph's circuit is open, ask it every probe period (users' writes all wait)."""
    while not stop.is_set():
        if teams.circuit.probe_due():
            await teams.probe()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=1.0)
