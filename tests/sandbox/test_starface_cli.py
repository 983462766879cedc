"""``add_arguments`` / ``run``: the sandbox as a process, stopped with Ctrl-C."""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from service.core.tls import client_context
from service.sandbox import starface

LAUNCH = (
    "import argparse, sys\n"
    "from service.sandbox import starface\n"
    "parser = argparse.ArgumentParser()\n"
    "starface.add_arguments(parser)\n"
    "sys.exit(starface.run(parser.parse_args(sys.argv[1:])))\n"
)


def test_defaults() -> None:
    parser = argparse.ArgumentParser()
    starface.add_arguments(parser)
    args = parser.parse_args([])
    assert (args.host, args.port, args.tls, args.namespace) == ("127.0.0.1", 8443, True, "v30")
    assert args.state_dir == Path("sandbox-state/starface")
    assert parser.parse_args(["--no-tls"]).tls is False


def test_runs_until_interrupted(tmp_path: Path) -> None:
    users_file = tmp_path / "users.json"
    users_file.write_text(
        json.dumps(
            [{"login": "0042", "password": "Zebra-Passw0rd", "email": "x@example.com", "oauthAllowed": True}]
        )
    )
    state = tmp_path / "state"
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            LAUNCH,
            "--port=0",
            "--control-port=0",
            f"--state-dir={state}",
            f"--users-file={users_file}",
            "--namespace=v22",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert process.stdout is not None
        banner = ""
        while "Ctrl-C" not in banner:
            line = process.stdout.readline()
            assert line, process.stderr.read() if process.stderr else "no output"
            banner += line
        base_url = re.search(r"base URL\s+(\S+)", banner)
        assert base_url is not None
        assert "0042" in banner
        assert "Zebra-Passw0rd" not in banner  # passwords stay in the users file
        token = (state / "control-token").read_text().strip()
        assert token not in banner
        assert (state / "control-token").stat().st_mode & 0o077 == 0
        with httpx.Client(verify=client_context(state / "ca.crt"), trust_env=False) as http:
            assert base_url.group(1).startswith("https://127.0.0.1:")
            assert http.get(f"{base_url.group(1)}/rest/login", headers={"X-Version": "2"}).status_code == 200
            users = http.get(
                f"{base_url.group(1)}/control/users", headers={"Authorization": f"Bearer {token}"}
            ).json()
            assert [u["login"] for u in users] == ["0042"]
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
