"""sd_notify datagrams: to a path socket, to an abstract one, and nothing without a manager."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
from pathlib import Path

import pytest

from service.core import heartbeat, watchdog


def _manager(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


def test_notify_reaches_a_path_socket_and_an_abstract_one() -> None:
    path = Path(tempfile.mkdtemp(prefix="pb-wd-")) / "notify"
    with _manager(str(path)) as manager:
        assert watchdog.notify("WATCHDOG=1", {"NOTIFY_SOCKET": str(path)})
        assert manager.recv(64) == b"WATCHDOG=1"
    name = f"pb-watchdog-test-{os.getpid()}"
    with _manager("\0" + name) as manager:
        assert watchdog.notify("WATCHDOG=1", {"NOTIFY_SOCKET": "@" + name})
        assert manager.recv(64) == b"WATCHDOG=1"


@pytest.mark.parametrize("address", ["", "relative/notify", "/nonexistent/dir/notify"])
def test_without_a_reachable_manager_nothing_is_sent_and_nothing_fails(address: str) -> None:
    assert not watchdog.notify("WATCHDOG=1", {"NOTIFY_SOCKET": address})


async def test_each_heartbeat_feeds_the_watchdog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = Path(tempfile.mkdtemp(prefix="pb-wd-")) / "notify"
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    with _manager(str(path)) as manager:
        manager.setblocking(False)
        stop = asyncio.Event()
        beating = asyncio.create_task(heartbeat.run(tmp_path, ["worker"], stop, period=0.01))
        loop = asyncio.get_running_loop()
        received = [await asyncio.wait_for(loop.sock_recv(manager, 64), 5) for _ in range(3)]
        stop.set()
        await beating
    assert received == [b"WATCHDOG=1"] * 3
