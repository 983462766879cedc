"""Graph sandbox: control API authentication, subscription control, and the CLI entry point."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import msal
import requests

from service.sandbox.tls import CertificateAuthority
from tests.fixtures.graph_sandbox import GRAPH_DEFAULT_SCOPE, GraphReceiver, GraphSandboxHandle

SandboxFactory = Callable[..., GraphSandboxHandle]
ReceiverFactory = Callable[[CertificateAuthority], GraphReceiver]
PASSWORD = "Sandbox-Passw0rd!"


def test_control_api_requires_the_token(graph_sandbox: SandboxFactory) -> None:
    handle = graph_sandbox()
    session = handle.http()
    url = f"{handle.base_url}/_sandbox/status"
    assert session.get(url).status_code == 401
    assert session.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert session.get(url, headers={"Authorization": f"Basic {handle.control_token}"}).status_code == 401
    status = session.get(url, headers={"Authorization": f"Bearer {handle.control_token}"})
    assert status.status_code == 200
    assert status.json()["tenantId"] == handle.tenant_id
    # Graph tokens do not open the control API, and the control token does not open Graph.
    assert session.get(url, headers={"Authorization": f"Bearer {handle.app_token()}"}).status_code == 401
    assert handle.graph("GET", "users", handle.control_token).status_code == 401


def test_control_rejects_bad_input_and_oversized_bodies(graph_sandbox: SandboxFactory) -> None:
    handle = graph_sandbox()
    session = handle.http()
    headers = {"Authorization": f"Bearer {handle.control_token}"}
    user = handle.add_user("Anna Alpha")["id"]
    bad_state = session.put(
        f"{handle.base_url}/_sandbox/users/{user}/sessions/desktop",
        json={"availability": "Happy", "activity": "Dancing"},
        headers=headers,
    )
    assert bad_state.status_code == 400
    not_json = session.post(f"{handle.base_url}/_sandbox/users", data=b"{", headers=headers)
    assert not_json.status_code == 400
    huge = session.post(f"{handle.base_url}/_sandbox/users", data=b"x" * (2 * 1024 * 1024), headers=headers)
    assert huge.status_code == 413
    token_huge = session.post(f"{handle.authority}/oauth2/v2.0/token", data=b"a=" + b"x" * (100 * 1024))
    assert token_huge.status_code == 413


def test_control_expires_and_deletes_subscriptions(
    graph_sandbox: SandboxFactory, graph_receiver: ReceiverFactory
) -> None:
    handle = graph_sandbox()
    receiver = graph_receiver(handle.sandbox.ca)
    user = handle.add_user("Anna Alpha")["id"]
    ids = []
    tokens = []
    for n in (1, 2):
        handle.add_service_account(f"svc{n}@sandbox.onmicrosoft.com", PASSWORD)
        token = handle.user_token(f"svc{n}@sandbox.onmicrosoft.com", PASSWORD)
        created = handle.graph("POST", "subscriptions", token, handle.subscription_body(receiver, [user]))
        assert created.status_code == 201
        ids.append(created.json()["id"])
        tokens.append(token)
    expired = handle.control("POST", f"/subscriptions/{ids[0]}/expire")
    assert expired["active"] is False
    handle.control("DELETE", f"/subscriptions/{ids[1]}")
    for sid, token in zip(ids, tokens, strict=True):
        assert handle.graph("GET", f"subscriptions/{sid}", token).status_code == 404
    listed = {s["id"]: s for s in handle.control("GET", "/subscriptions")["value"]}
    assert listed[ids[0]]["active"] is False
    assert listed[ids[1]]["deleted"] is True


def test_presence_history_records_causes(graph_sandbox: SandboxFactory) -> None:
    handle = graph_sandbox()
    user = handle.add_user("Anna Alpha")["id"]
    handle.set_teams_presence(user, "Busy", "InAMeeting")
    token = handle.app_token()
    handle.graph(
        "POST",
        f"users/{user}/presence/setPresence",
        token,
        {"sessionId": handle.client_id, "availability": "DoNotDisturb", "activity": "Presenting"},
    )
    history = handle.history(user)
    assert [(h["availability"], h["activity"]) for h in history] == [
        ("Offline", "Offline"),
        ("Busy", "InAMeeting"),
        ("DoNotDisturb", "Presenting"),
    ]
    assert "Teams client desktop" in history[1]["cause"]
    assert handle.client_id in history[2]["cause"]


def _launch(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[str], dict[str, str]]:
    code = (
        "import argparse, sys\n"
        "from service.sandbox.graph_cli import add_arguments, run\n"
        "parser = argparse.ArgumentParser()\n"
        "add_arguments(parser)\n"
        "sys.exit(run(parser.parse_args(sys.argv[1:])))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")}
    process = subprocess.Popen(
        [sys.executable, "-c", code, "--port", "0", "--state-dir", str(tmp_path / "state"), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        env=env,
    )
    printed: dict[str, str] = {}
    deadline = time.monotonic() + 30
    assert process.stdout is not None
    while "client secret" not in printed:
        assert time.monotonic() < deadline, "the sandbox did not print its settings"
        line = process.stdout.readline()
        assert line, process.stderr.read() if process.stderr else "no output"
        key, _, value = line.strip().partition("  ")
        if value:
            printed[key.strip()] = value.strip()
    return process, printed


def test_cli_run_serves_and_prints_its_settings(tmp_path: Path) -> None:
    users_file = tmp_path / "users.json"
    users_file.write_text(json.dumps([{"displayName": "Seeded Person", "mail": "seeded@contoso.test"}]))
    process, printed = _launch(
        tmp_path,
        "--users",
        "3",
        "--users-file",
        str(users_file),
        "--control-token",
        "cli-control-token",
        "--client-secret",
        "cli-secret",
    )
    try:
        base_url = printed["base URL"]
        ca_file = printed["CA certificate"]
        assert Path(ca_file).is_file()
        token_file = Path(printed["control token file"])
        assert token_file.read_text() == "cli-control-token"
        assert token_file.stat().st_mode & 0o077 == 0
        assert printed["client secret"] == "cli-secret"
        session = requests.Session()
        session.trust_env = False
        session.verify = ca_file
        app = msal.ConfidentialClientApplication(
            printed["client id"],
            authority=printed["authority (MSAL)"],
            client_credential="cli-secret",
            http_client=session,
            instance_discovery=False,
        )
        assert "access_token" in app.acquire_token_for_client(scopes=[GRAPH_DEFAULT_SCOPE])
        users = session.get(
            f"{base_url}/_sandbox/users", headers={"Authorization": "Bearer cli-control-token"}
        ).json()["value"]
        assert len(users) == 3 + 1 + 1  # demo users, the users file, one service account
        assert any(u["mail"] == "seeded@contoso.test" for u in users)
        accounts = json.loads(Path(printed["service accounts"]).read_text())
        assert accounts[0]["userPrincipalName"].startswith("svc-presence01@")
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0
