"""The one way this project serves an ASGI app with uvicorn, through uvicorn's public API only.

``AppServer`` serves on the running event loop (the runtime, async tests); ``ServerThread`` serves
on a loop of its own in a daemon thread (sandboxes, test receivers, benchmarks), because callers
such as MSAL block their own thread on HTTP and a server on that thread's loop would deadlock.
``LoopThread`` is that thread for anything with an async start and stop.

Both bind before serving, so port 0 gives a free port that ``port`` reports and that stays fixed
if the same ``AppServer`` is started again.  Stopping closes idle keep-alive connections at once:
an idle TLS peer (a blocking client's pool) never answers close_notify, and uvicorn would wait
for it until its graceful timeout.  Connections in the middle of a request finish it first.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

GRACE_SECONDS = 5.0
START_SECONDS = 15.0


class _Server(uvicorn.Server):
    """Leaves signals to the process: the runtime stops its workers on a signal too."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class _ListeningSocket(socket.socket):
    """Remembers the connections asyncio accepts on it (and when), so a stop can close the idle
    ones and a deadline can close those that never finish sending a request's headers."""

    def __init__(self, family: int) -> None:
        # Declare TCP explicitly: asyncio enables TCP_NODELAY only on sockets whose proto says TCP,
        # and without it every response waits ~40 ms for a delayed ACK between its TLS records.
        super().__init__(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.accepted: weakref.WeakKeyDictionary[socket.socket, float] = weakref.WeakKeyDictionary()

    def accept(self) -> tuple[socket.socket, Any]:
        connection, address = super().accept()
        self.accepted[connection] = time.monotonic()
        return connection, address


class _ActiveRequests:
    """ASGI wrapper counting requests in progress per peer address."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.peers: collections.Counter[tuple[str, int]] = collections.Counter()
        # When each peer's last request ended: from then on it waits for the next one's headers.
        self.idle_since: dict[tuple[str, int], float] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if scope["type"] == "lifespan" or client is None:
            await self.app(scope, receive, send)
            return
        peer = (str(client[0]), int(client[1]))
        self.peers[peer] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.peers[peer] -= 1
            if self.peers[peer] <= 0:
                del self.peers[peer]
                self.idle_since[peer] = time.monotonic()


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class AppServer:
    """uvicorn serving ``app`` on the running event loop: ``await start()`` ... ``await stop()``.

    TLS comes from ``ssl_context`` or from ``cert_file``/``key_file``; other uvicorn options pass
    through ``options`` (e.g. ``lifespan="off"``, ``http="h11"``).  ``header_seconds`` closes a
    connection that has not completed a request's headers (TLS handshake included) that long after
    it was accepted or after its previous request ended: uvicorn bounds neither, so a client that
    dribbles or says nothing would hold its socket for ever.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        cert_file: str | Path | None = None,
        key_file: str | Path | None = None,
        log_level: str = "warning",
        grace_seconds: float = GRACE_SECONDS,
        header_seconds: float | None = None,
        **options: Any,
    ) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.tls = ssl_context is not None or cert_file is not None
        self._ssl_context = ssl_context
        self._cert_file = cert_file
        self._key_file = key_file
        self._log_level = log_level
        self._grace = grace_seconds
        self._header_seconds = header_seconds
        self.connections_cut = 0
        self._options = {"access_log": False, "lifespan": "on", **options}
        self._active = _ActiveRequests(app)
        self._server: _Server | None = None
        self._socket: _ListeningSocket | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping: asyncio.Task[None] | None = None
        self._stop_requested = asyncio.Event()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{url_host(self.host)}:{self.port}"

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def _config(self) -> uvicorn.Config:
        tls: dict[str, Any] = {}
        if self._ssl_context is not None:
            context = self._ssl_context
            tls["ssl_context_factory"] = lambda _config, _default: context
        elif self._cert_file is not None:
            tls["ssl_certfile"] = str(self._cert_file)
            tls["ssl_keyfile"] = None if self._key_file is None else str(self._key_file)
        return uvicorn.Config(
            self._active, log_config=None, log_level=self._log_level, **tls, **self._options
        )

    def _listen(self) -> _ListeningSocket:
        sock = _ListeningSocket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        return sock

    def bind(self) -> int:
        """Bind the listening socket now (if not yet) and return its port."""
        if self._socket is None:
            self._socket = self._listen()
            self.port = self._socket.getsockname()[1]
        return self.port

    async def start(self) -> None:
        """Listen and return once the app's lifespan has started; raise if it does not."""
        if self._stopping is not None:
            await self._stopping
            self._stopping = None
        if self.running:
            return
        self.bind()
        assert self._socket is not None
        self._server = _Server(self._config())
        self._task = asyncio.create_task(self._server.serve(sockets=[self._socket]), name="uvicorn")
        deadline = time.monotonic() + START_SECONDS
        while not self._server.started:
            if self._task.done() or time.monotonic() > deadline:
                self._socket.close()
                self._socket = None
                if self._task.done() and not self._task.cancelled():
                    error = self._task.exception()
                    if error is not None and not isinstance(error, SystemExit):
                        raise error
                self._task.cancel()
                raise RuntimeError(f"the server on {self.url} did not start")
            await asyncio.sleep(0.01)

    def _drop_idle(self) -> None:
        if self._socket is None:
            return
        busy = set(self._active.peers)
        for connection in list(self._socket.accepted.keys()):
            with contextlib.suppress(OSError):
                peer = connection.getpeername()
                if (str(peer[0]), int(peer[1])) not in busy:
                    # The transport sees end of file and closes itself, so uvicorn stops waiting.
                    connection.shutdown(socket.SHUT_RDWR)

    async def stop(self) -> None:
        """Stop listening, let requests in progress finish (up to the grace time), close the rest."""
        server, task = self._server, self._task
        if server is None or task is None:
            return
        server.should_exit = True
        deadline = time.monotonic() + self._grace
        while not task.done():
            if time.monotonic() > deadline:
                server.force_exit = True
                self._active.peers.clear()
            self._drop_idle()
            await asyncio.wait([task], timeout=0.05)
        self._server = self._task = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]

    async def stop_accepting(self) -> None:
        """Stop listening now and finish stopping in the background.

        For a stop that one of this server's own requests asks for: ``stop()`` would wait for that
        request, which waits for the stop.  ``start()`` waits for the background stop to end.
        """
        server = self._server
        if server is None or self._stopping is not None:
            return
        self._stopping = asyncio.create_task(self.stop(), name="uvicorn-stop")
        # uvicorn's main loop notices should_exit within a tick; uvicorn then closes its listener.
        while not self._stopping.done():
            if not any(listener.is_serving() for listener in server.servers):
                break
            await asyncio.sleep(0.01)

    def cut_slow_connections(self, now: float | None = None) -> int:
        """Close connections waiting for a request's headers longer than ``header_seconds``."""
        if self._socket is None or self._header_seconds is None:
            return 0
        now = time.monotonic() if now is None else now
        busy = set(self._active.peers)
        live: set[tuple[str, int]] = set()
        cut = 0
        for connection, accepted_at in list(self._socket.accepted.items()):
            with contextlib.suppress(OSError):
                name = connection.getpeername()
                peer = (str(name[0]), int(name[1]))
                live.add(peer)
                if peer in busy:
                    continue
                waiting_since = max(accepted_at, self._active.idle_since.get(peer, 0.0))
                if now - waiting_since > self._header_seconds:
                    connection.shutdown(socket.SHUT_RDWR)
                    self._socket.accepted.pop(connection, None)
                    self._active.idle_since.pop(peer, None)
                    cut += 1
        for gone in set(self._active.idle_since) - live:
            del self._active.idle_since[gone]
        self.connections_cut += cut
        return cut

    async def _watch_headers(self) -> None:
        assert self._header_seconds is not None
        period = min(1.0, self._header_seconds / 4)
        while True:
            await asyncio.sleep(period)
            self.cut_slow_connections()

    async def serve(self) -> None:
        """Serve until ``request_stop()``, cancellation or uvicorn ending on its own; then stop cleanly."""
        self._stop_requested.clear()
        await self.start()
        assert self._task is not None
        waiter = asyncio.create_task(self._stop_requested.wait())
        watcher = None if self._header_seconds is None else asyncio.create_task(self._watch_headers())
        try:
            await asyncio.wait([self._task, waiter], return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            if watcher is not None:
                watcher.cancel()
            await self.stop()

    def request_stop(self) -> None:
        """Ask a ``serve()`` in progress (on this loop) to stop."""
        self._stop_requested.set()


class LoopThread:
    """Runs ``start()`` then, after ``stop()`` is called, ``shutdown()`` on a loop in a daemon thread."""

    def __init__(
        self, start: Callable[[], Awaitable[Any]], shutdown: Callable[[], Awaitable[Any]], name: str
    ) -> None:
        self._start = start
        self._shutdown = shutdown
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def _run(self) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._start())
        except BaseException as exc:  # reported to the starting thread, which re-raises it
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        loop.run_forever()
        try:
            loop.run_until_complete(self._shutdown())
        finally:
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def start(self, timeout: float = 30.0) -> None:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"{self._thread.name} did not start within {timeout:g} s")
        if self._error is not None:
            raise self._error

    def call(self, fn: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Run ``fn`` on the thread's loop (state served there belongs to it); return its result."""

        async def invoke() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(invoke(), self._loop).result(timeout)

    def wait(self) -> None:
        """Block until the thread ends; Ctrl-C (KeyboardInterrupt) propagates to the caller."""
        while self._thread.is_alive():
            self._thread.join(0.5)

    def stop(self, timeout: float = 30.0) -> None:
        if self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop closed already
                self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)


class ServerThread(LoopThread):
    """An ``AppServer`` on a loop of its own in a daemon thread; same arguments as ``AppServer``."""

    def __init__(self, app: ASGIApp, **kwargs: Any) -> None:
        self.server = AppServer(app, **kwargs)
        super().__init__(self.server.start, self.server.stop, name="app-server")
        # Bind now: callers want the URL (and a sandbox its issuer) before the thread runs.
        self.server.bind()

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def base_url(self) -> str:
        return self.server.url

    url = base_url
