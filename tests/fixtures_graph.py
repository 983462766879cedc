"""Fixtures for the graph tests (a pytest plugin registered in tests/conftest.py).

``graph_sandbox`` starts Graph sandboxes over real TLS on background threads; ``graph_receiver``
starts notification endpoints (TLS, certificate from a sandbox CA) that answer the validation
handshake and record what Graph posts; ``encryption_keypair`` is an RSA key plus certificate for
rich notifications.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import threading
import time
import urllib.parse
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msal
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from requests.adapters import HTTPAdapter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from service.sandbox.entra import SigningKey
from service.sandbox.graph import GraphSandbox, SandboxOptions, ServerThread
from service.tls import CertificateAuthority

GRAPH_DEFAULT_SCOPE = "https://graph.microsoft.com/.default"
SERVICE_PASSWORD = "Sandbox-Passw0rd!"  # a sandbox account's; nothing real


class _PortlessToSandbox(HTTPAdapter):
    """MSAL asks ``https://<authority host>/common/userrealm/...`` without the port; send it home."""

    def __init__(self, base_url: str) -> None:
        super().__init__()
        self.base_url = base_url

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        parts = urllib.parse.urlsplit(str(request.url))
        request.url = urllib.parse.urlunsplit(
            (parts.scheme, urllib.parse.urlsplit(self.base_url).netloc, parts.path, parts.query, "")
        )
        return super().send(request, *args, **kwargs)


@dataclass
class GraphSandboxHandle:
    sandbox: GraphSandbox
    server: ServerThread
    control_token: str
    _sessions: list[requests.Session] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return self.server.base_url

    @property
    def tenant_id(self) -> str:
        return self.sandbox.options.tenant_id

    @property
    def authority(self) -> str:
        return f"{self.base_url}/{self.tenant_id}"

    @property
    def ca_file(self) -> str:
        return str(self.sandbox.ca_file)

    @property
    def client_id(self) -> str:
        return self.sandbox.options.client_id

    @property
    def client_secret(self) -> str:
        return self.sandbox.options.client_secret

    def http(self) -> requests.Session:
        """A session that trusts the sandbox CA only (no environment overrides) and maps userrealm."""
        session = requests.Session()
        session.trust_env = False
        session.verify = self.ca_file
        host = urllib.parse.urlsplit(self.base_url).hostname
        session.mount(f"https://{host}/", _PortlessToSandbox(self.base_url))
        self._sessions.append(session)
        return session

    def confidential_app(
        self, client_id: str | None = None, client_secret: str | None = None
    ) -> msal.ConfidentialClientApplication:
        return msal.ConfidentialClientApplication(
            client_id or self.client_id,
            authority=self.authority,
            client_credential=client_secret or self.client_secret,
            http_client=self.http(),
            instance_discovery=False,
        )

    def public_app(self, client_id: str | None = None) -> msal.PublicClientApplication:
        return msal.PublicClientApplication(
            client_id or self.client_id,
            authority=self.authority,
            http_client=self.http(),
            instance_discovery=False,
        )

    def app_token(self, client_id: str | None = None, client_secret: str | None = None) -> str:
        result = self.confidential_app(client_id, client_secret).acquire_token_for_client(
            scopes=[GRAPH_DEFAULT_SCOPE]
        )
        assert "access_token" in result, result
        return str(result["access_token"])

    def user_token(
        self, username: str, password: str, scopes: list[str] | None = None, client_id: str | None = None
    ) -> str:
        app = self.public_app(client_id)
        with warnings.catch_warnings():  # MSAL marks ROPC deprecated for public clients
            warnings.simplefilter("ignore", DeprecationWarning)
            result = app.acquire_token_by_username_password(
                username, password, scopes=scopes or ["Presence.Read.All"]
            )
        assert "access_token" in result, result
        return str(result["access_token"])

    # control API

    def control(self, method: str, path: str, body: Any = None) -> Any:
        session = self._control_session()
        response = session.request(
            method,
            f"{self.base_url}/_sandbox{path}",
            json=body,
            headers={"Authorization": f"Bearer {self.control_token}"},
            timeout=30,
        )
        if response.status_code >= 400:
            raise AssertionError(f"control {method} {path}: {response.status_code} {response.text}")
        return response.json() if response.content else None

    def _control_session(self) -> requests.Session:
        if not self._sessions:
            self.http()
        return self._sessions[0]

    def add_user(self, display_name: str, **fields: Any) -> dict[str, Any]:
        body = {"displayName": display_name, **fields}
        result: dict[str, Any] = self.control("POST", "/users", body)
        return result

    def add_service_account(
        self, upn: str, password: str = SERVICE_PASSWORD, *, mfa_required: bool = False
    ) -> dict[str, Any]:
        return self.add_user(
            f"Service {upn.split('@')[0]}",
            userPrincipalName=upn,
            password=password,
            mfaRequired=mfa_required,
        )

    def set_teams_presence(
        self, user_id: str, availability: str, activity: str, session: str = "desktop"
    ) -> dict[str, Any]:
        result: dict[str, Any] = self.control(
            "PUT",
            f"/users/{user_id}/sessions/{session}",
            {"availability": availability, "activity": activity},
        )
        return result

    def advance(self, seconds: float) -> None:
        self.control("POST", "/clock/advance", {"seconds": seconds})

    def now(self) -> float:
        """The sandbox's (virtual) time as epoch seconds."""
        return float(self.control("GET", "/clock")["epoch"])

    def expiry(self, minutes: float) -> str:
        """An ``expirationDateTime`` ``minutes`` ahead of the sandbox clock."""
        moment = dt.datetime.fromtimestamp(self.now() + minutes * 60, dt.UTC)
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def subscription_body(
        self,
        receiver: GraphReceiver,
        user_ids: list[str],
        keypair: EncryptionKeypair | None = None,
        *,
        minutes: float = 59,
        lifecycle: bool = True,
        **overrides: Any,
    ) -> dict[str, Any]:
        if len(user_ids) == 1:
            resource = f"/communications/presences/{user_ids[0]}"
        else:
            resource = "/communications/presences?$filter=id in ({})".format(
                ",".join(f"'{u}'" for u in user_ids)
            )
        body: dict[str, Any] = {
            "changeType": "updated",
            "notificationUrl": receiver.url("notify"),
            "resource": resource,
            "expirationDateTime": self.expiry(minutes),
            "clientState": "client-state-0123456789",
            "includeResourceData": keypair is not None,
        }
        if lifecycle:
            body["lifecycleNotificationUrl"] = receiver.url("lifecycle")
        if keypair is not None:
            body["encryptionCertificate"] = keypair.certificate_b64
            body["encryptionCertificateId"] = "bridge-cert-1"
        body.update(overrides)
        return body

    def history(self, user_id: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.control("GET", f"/users/{user_id}/presence-history")["value"]
        return result

    def deliveries(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.control("GET", "/deliveries")["value"]
        return result

    def graph(
        self, method: str, path: str, token: str | None, body: Any = None, **kwargs: Any
    ) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        url = f"{self.base_url}/v1.0/{path.lstrip('/')}"
        return self._control_session().request(method, url, json=body, headers=headers, timeout=30, **kwargs)

    def close(self) -> None:
        self.server.stop()
        for session in self._sessions:
            session.close()


@pytest.fixture(scope="session")
def sandbox_signing_key() -> SigningKey:
    # RSA key generation is the slowest part of starting a sandbox; tests share one key.
    return SigningKey()


@pytest.fixture
def graph_sandbox(
    tmp_path: Path, sandbox_signing_key: SigningKey
) -> Iterator[Callable[..., GraphSandboxHandle]]:
    """Factory: ``graph_sandbox(coalesce_seconds=0.05, ...)`` → a running sandbox handle."""
    handles: list[GraphSandboxHandle] = []

    def factory(**overrides: Any) -> GraphSandboxHandle:
        overrides.setdefault("coalesce_seconds", 0.05)
        overrides.setdefault("device_code_interval", 1)
        overrides.setdefault("signing_key", sandbox_signing_key)
        options = SandboxOptions(**overrides)
        state_dir = tmp_path / f"graph-sandbox-{len(handles)}"
        state_dir.mkdir()
        sandbox = GraphSandbox(options, state_dir=state_dir)
        server = sandbox.serve_in_thread()
        handle = GraphSandboxHandle(sandbox, server, options.control_token)
        handles.append(handle)
        return handle

    yield factory
    for handle in handles:
        handle.close()


# ---- notification receivers ------------------------------------------------------------------


@dataclass
class Received:
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


class GraphReceiver:
    """A webhook endpoint over TLS; behaviour per path is set by the test before it is needed."""

    def __init__(self) -> None:
        self.validations: list[Received] = []
        self.notifications: list[Received] = []
        # Per path: "echo" (correct), "wrong" (altered token), "status:<n>", "slow:<s>", "json".
        self.validation_mode: dict[str, str] = {}
        self.statuses: deque[int] = deque()
        self.delays: deque[float] = deque()
        self._changed = threading.Condition()
        self.server: ServerThread | None = None
        self.app = Starlette(routes=[Route("/{path:path}", self._handle, methods=["POST", "GET"])])

    def url(self, path: str = "notify") -> str:
        assert self.server is not None
        return f"{self.server.base_url}/{path}"

    async def _handle(self, request: Request) -> Response:
        body = await request.body()
        item = Received(
            request.url.path,
            dict(request.query_params),
            {k.lower(): v for k, v in request.headers.items()},
            body,
            time.monotonic(),
        )
        token = request.query_params.get("validationToken")
        if token is not None:
            with self._changed:
                self.validations.append(item)
                self._changed.notify_all()
            mode = self.validation_mode.get(request.url.path.lstrip("/"), "echo")
            if mode == "wrong":
                return PlainTextResponse(token + "x")
            if mode == "json":
                return Response(f'"{token}"', media_type="application/json")
            if mode.startswith("status:"):
                return PlainTextResponse("no", status_code=int(mode.split(":")[1]))
            if mode.startswith("slow:"):
                await asyncio.sleep(float(mode.split(":")[1]))
            return PlainTextResponse(token)
        delay = self.delays.popleft() if self.delays else 0.0
        status = self.statuses.popleft() if self.statuses else 202
        if delay:
            await asyncio.sleep(delay)
        with self._changed:
            self.notifications.append(item)
            self._changed.notify_all()
        return Response(status_code=status)

    def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float = 10.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self.notifications):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"timed out; received {len(self.notifications)} notification POSTs")
                self._changed.wait(remaining)
            return list(self.notifications)

    def items(self, path: str | None = None) -> list[dict[str, Any]]:
        """All notification items received so far (optionally only on one path)."""
        with self._changed:
            posts = [n for n in self.notifications if path is None or n.path == f"/{path}"]
        return [item for post in posts for item in post.json()["value"]]


@pytest.fixture
def graph_receiver(tmp_path: Path) -> Iterator[Callable[[CertificateAuthority], GraphReceiver]]:
    """Factory: ``graph_receiver(sandbox.sandbox.ca)`` → a running receiver trusted by that CA."""
    receivers: list[GraphReceiver] = []

    def factory(ca: CertificateAuthority) -> GraphReceiver:
        receiver = GraphReceiver()
        issued = ca.issue(["127.0.0.1", "localhost"])
        cert_file, key_file = issued.write(tmp_path / f"receiver-{len(receivers)}", "server")
        receiver.server = ServerThread(
            receiver.app, host="127.0.0.1", port=0, cert_file=cert_file, key_file=key_file
        )
        receiver.server.start()
        receivers.append(receiver)
        return receiver

    yield factory
    for receiver in receivers:
        assert receiver.server is not None
        receiver.server.stop()


@dataclass(frozen=True)
class EncryptionKeypair:
    private_key: rsa.RSAPrivateKey
    certificate: x509.Certificate

    @property
    def certificate_b64(self) -> str:
        """``encryptionCertificate`` as Graph wants it: base64 of the DER certificate."""
        return base64.b64encode(self.certificate.public_bytes(serialization.Encoding.DER)).decode()


@pytest.fixture(scope="session")
def encryption_keypair() -> EncryptionKeypair:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bridge notification encryption")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return EncryptionKeypair(key, certificate)
