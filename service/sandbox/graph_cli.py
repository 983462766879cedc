"""``presence-bridge sandbox graph``: its arguments, and serving until Ctrl-C."""

from __future__ import annotations

import argparse
import json
import secrets
from pathlib import Path

from service.sandbox.graph import GraphSandbox
from service.sandbox.graph_host import SandboxOptions
from service.sandbox.secretfile import write_secret


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8443, help="TLS port (default 8443; 0 = any free port)")
    parser.add_argument(
        "--state-dir",
        default="./sandbox-state/graph",
        help="directory for the CA certificate, server certificate and control token",
    )
    parser.add_argument("--tenant-id", default=None, help="tenant id (default: a random GUID)")
    parser.add_argument(
        "--domain", default="sandbox.onmicrosoft.com", help="tenant domain for generated UPNs"
    )
    parser.add_argument(
        "--client-id", default=None, help="client id of the pre-registered app (default random)"
    )
    parser.add_argument("--client-secret", default=None, help="its client secret (default random)")
    parser.add_argument(
        "--control-token", default=None, help="bearer token of the control API (default random)"
    )
    parser.add_argument("--users", type=int, default=0, help="seed N demo users")
    parser.add_argument(
        "--users-file",
        default=None,
        help="JSON list of users to seed: {displayName, mail, userPrincipalName, id, password, mfaRequired}",
    )
    parser.add_argument(
        "--service-accounts",
        type=int,
        default=1,
        help="seed N service accounts with passwords (written to the state dir), default 1",
    )
    parser.add_argument(
        "--delivery-ca-file",
        default=None,
        help="CA bundle trusted for notification endpoints (default: own CA)",
    )
    parser.add_argument(
        "--coalesce-seconds", type=float, default=1.0, help="window that gathers changes into one POST"
    )
    parser.add_argument(
        "--sequence-numbers",
        action="store_true",
        help="add sequenceNumber to the decrypted presence (Microsoft documents the payload without it)",
    )


def build_from_args(args: argparse.Namespace) -> GraphSandbox:
    state_dir = Path(args.state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    options = SandboxOptions(
        domain=args.domain, coalesce_seconds=args.coalesce_seconds, sequence_numbers=args.sequence_numbers
    )
    if args.tenant_id:
        options.tenant_id = args.tenant_id
    if args.client_id:
        options.client_id = args.client_id
    if args.client_secret:
        options.client_secret = args.client_secret
    if args.control_token:
        options.control_token = args.control_token
    if args.delivery_ca_file:
        options.delivery_ca_file = args.delivery_ca_file
    sandbox = GraphSandbox(options, state_dir=state_dir)
    for number in range(1, args.users + 1):
        sandbox.add_user(f"Demo User{number:03d}", mail=f"user{number:03d}@{options.domain}")
    if args.users_file:
        entries = json.loads(Path(args.users_file).read_text(encoding="utf-8"))
        if not isinstance(entries, list):
            raise ValueError("the users file must hold a JSON list")
        for entry in entries:
            sandbox.add_user(
                entry["displayName"],
                mail=entry.get("mail"),
                user_principal_name=entry.get("userPrincipalName"),
                user_id=entry.get("id"),
                password=entry.get("password"),
                mfa_required=bool(entry.get("mfaRequired", False)),
            )
    accounts = []
    for number in range(1, args.service_accounts + 1):
        password = secrets.token_urlsafe(18)
        created = sandbox.add_user(
            f"Presence Service{number:02d}",
            user_principal_name=f"svc-presence{number:02d}@{options.domain}",
            password=password,
        )
        accounts.append(
            {"userPrincipalName": created.user_principal_name, "password": password, "id": created.id}
        )
    write_secret(state_dir / "control-token", options.control_token)
    write_secret(state_dir / "service-accounts.json", json.dumps(accounts, indent=2))
    return sandbox


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted; print what a bridge needs to point at the sandbox."""
    sandbox = build_from_args(args)
    server = sandbox.serve_in_thread(args.host, args.port)
    state_dir = Path(args.state_dir)
    lines = [
        "Graph sandbox (Entra ID + Microsoft Graph presence) is serving:",
        f"  base URL            {sandbox.base_url}",
        f"  authority (MSAL)    {sandbox.base_url}/{sandbox.options.tenant_id}",
        f"  CA certificate      {sandbox.ca_file}",
        f"  control token file  {state_dir / 'control-token'}",
        f"  service accounts    {state_dir / 'service-accounts.json'}",
        f"  tenant id           {sandbox.options.tenant_id}",
        f"  client id           {sandbox.options.client_id}",
        f"  client secret       {sandbox.options.client_secret}",
        f"  users               {len(sandbox.entra.accounts)}",
        "Bridge settings: GRAPH_BASE_URL and AUTHORITY_BASE_URL = the base URL, EXTRA_CA_FILE = the CA file.",
    ]
    print("\n".join(lines), flush=True)
    try:
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0
