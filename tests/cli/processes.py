"""Helpers for driving ``presence-bridge`` as a real subprocess (used by tests/cli/test_commands.py).

Nothing here is a registered pytest plugin: ``test_cli.py`` imports what it needs.

* ``clean_env(**settings)`` — ``os.environ`` without any bridge setting (``service.core.settings.FIELDS``),
  plus the given settings, so neither the developer's shell nor CI leaks configuration in.
* ``run_cli(args, env, cwd)`` — one command to completion (``stdin`` is /dev/null unless ``input``).
* ``run_many([...], env, cwd)`` / ``run_jobs([(args, env), ...], cwd)`` — several short commands
  concurrently (most commands take ~0.8 s to start, so independent ones run side by side).
* ``CliProcess`` — a long-running command (``serve``, ``sandbox``): its output is read by threads,
  ``wait_for`` polls it for a pattern with a deadline, ``stop`` sends a signal and waits.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx

from service.core.settings import FIELDS

REPO_ROOT = Path(__file__).resolve().parents[2]
BRIDGE_SETTINGS = frozenset(spec.env for spec in FIELDS)
# Variables that would change what a child prints (colours, CA bundles for the sandboxes' clients).
UNWANTED = frozenset({"FORCE_COLOR", "PYTHON_COLORS", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "COLUMNS"})
COMMAND_TIMEOUT = 20.0


def clean_env(**settings: str | Path) -> dict[str, str]:
    """The parent's environment minus every bridge setting, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if k not in BRIDGE_SETTINGS and k not in UNWANTED}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env["NO_COLOR"] = "1"
    env.update({k: str(v) for k, v in settings.items()})
    return env


def cli_command(args: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "service", *args]


def run_cli(
    args: Sequence[str],
    env: dict[str, str],
    cwd: Path,
    *,
    input: str | None = None,
    timeout: float = COMMAND_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Run ``presence-bridge ARGS`` to completion and return its exit code and output."""
    return subprocess.run(
        cli_command(args),
        env=env,
        cwd=cwd,
        input=input,
        stdin=subprocess.DEVNULL if input is None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_many(
    commands: Sequence[Sequence[str]], env: dict[str, str], cwd: Path
) -> list[subprocess.CompletedProcess[str]]:
    """Run several short commands concurrently in one environment; results in their order."""
    return run_jobs([(args, env) for args in commands], cwd)


def run_jobs(
    jobs: Sequence[tuple[Sequence[str], dict[str, str]]],
    cwd: Path,
    *,
    inputs: Sequence[str | None] | None = None,
    workers: int = 4,
) -> list[subprocess.CompletedProcess[str]]:
    """Run several short (command, environment) jobs concurrently; results in their order.

    ``inputs``: what each job reads on stdin (``None``: /dev/null).
    """
    feeds = list(inputs) if inputs is not None else [None] * len(jobs)
    assert len(feeds) == len(jobs)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(
            pool.map(
                lambda job, feed: run_cli(job[0], job[1], cwd, input=feed),
                jobs,
                feeds,
            )
        )


def describe(result: subprocess.CompletedProcess[str]) -> str:
    """A failure message with everything the command printed."""
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


class CliProcess:
    """``presence-bridge ARGS`` running in the background, with its output collected as it comes."""

    def __init__(self, args: Sequence[str], env: dict[str, str], cwd: Path) -> None:
        self.args = list(args)
        self.process = subprocess.Popen(
            cli_command(args),
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._lock = threading.Condition()
        self._out: list[str] = []
        self._err: list[str] = []
        assert self.process.stdout is not None
        assert self.process.stderr is not None
        self._readers = [
            threading.Thread(target=self._pump, args=(self.process.stdout, self._out), daemon=True),
            threading.Thread(target=self._pump, args=(self.process.stderr, self._err), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _pump(self, stream: IO[str], into: list[str]) -> None:
        for line in stream:
            with self._lock:
                into.append(line)
                self._lock.notify_all()
        with self._lock:
            self._lock.notify_all()

    @property
    def stdout(self) -> str:
        with self._lock:
            return "".join(self._out)

    @property
    def stderr(self) -> str:
        with self._lock:
            return "".join(self._err)

    def output(self) -> str:
        return f"--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"

    def wait_for(self, pattern: str, *, stream: str = "stdout", timeout: float = 10.0) -> re.Match[str]:
        """The first match of ``pattern`` in what the process printed so far or prints in ``timeout``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                text = "".join(self._out if stream == "stdout" else self._err)
                found = regex.search(text)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0 or (self.process.poll() is not None and not self._alive()):
                    break
                self._lock.wait(min(left, 0.05))
        raise AssertionError(
            f"{' '.join(self.args)}: no {pattern!r} on {stream} within {timeout}s "
            f"(exit {self.process.poll()})\n{self.output()}"
        )

    def _alive(self) -> bool:
        return any(reader.is_alive() for reader in self._readers)

    def wait_for_http(
        self, url: str, *, headers: dict[str, str] | None = None, timeout: float = 15.0
    ) -> None:
        """Wait until ``GET url`` answers 200 (the process is serving); fail as ``poll_until``."""

        def answers() -> bool:
            try:
                return httpx.get(url, headers=headers, timeout=0.5, trust_env=False).status_code == 200
            except httpx.TransportError:
                return False

        self.poll_until(answers, timeout=timeout, what=f"{url} answering 200")

    def poll_until(
        self, check: Callable[[], bool], *, timeout: float = 10.0, what: str = "condition"
    ) -> None:
        """Call ``check`` every 50 ms until it is true; fail after ``timeout`` or if the process exits."""
        deadline = time.monotonic() + timeout
        while not check():
            if self.process.poll() is not None:
                raise AssertionError(f"exited with {self.process.returncode} before {what}\n{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} within {timeout}s\n{self.output()}")
            time.sleep(0.05)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 5.0) -> int:
        """Send ``signum`` and return the exit code; fails if the process needs more than ``timeout``."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{' '.join(self.args)} still running {timeout}s after signal {signum}\n{self.output()}"
            ) from None
        for reader in self._readers:
            reader.join(timeout=2)
        return code

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for reader in self._readers:
            reader.join(timeout=2)
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()

    def __enter__(self) -> CliProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
