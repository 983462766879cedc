"""Fixtures for the STARFACE tests (a pytest plugin registered in tests/conftest.py).

``starface_sandbox`` — factory fixture.  Each call starts a STARFACE sandbox on 127.0.0.1 (ephemeral
ports) in a background thread with its own event loop, so synchronous and asynchronous clients
both work; every sandbox is stopped at the end of the test::

    def test_something(starface_sandbox):
        pbx = starface_sandbox()                     # TLS on, namespace v30, session timeout 60 s
        pbx.add_user("0001", "secret", email="anna@example.com", oauth_allowed=True)
        pbx.base_url, pbx.ca_file                    # point the gateway here; trust ca_file
        call_id = pbx.place_call("0001")             # RINGING (empty names) -> RINGING (full)
        pbx.answer(call_id); pbx.hangup(call_id)     # CONNECTED, HANGUP
        pbx.history("0001")["dnd"]                   # [{"at", "value", "source", "session"}, ...]
        pbx.advance(61)                              # idle UCI sessions are now expired
        pbx.set_faults(down="refuse")                # or "503"; slow_seconds=…, errors=N; clear_faults()

Factory options: ``tls`` (default True), ``namespace`` ("v30"), ``session_timeout`` (60.0 s),
``oauth_client_secret`` (random), ``callback_ca_file`` (default: the sandbox's own CA).

Handle API (all go through the documented control API, ``docs/sandbox-starface.md``):
  users/groups: ``add_user``, ``update_user``, ``remove_user``, ``user``, ``add_group``,
  ``set_group_members``; state a phone would change: ``set_dnd_on_phone``, ``set_text_on_phone``;
  calls: ``place_call`` (incoming/outgoing, returns the call id), ``answer``, ``hangup``, ``calls``;
  reads: ``history``, ``session``, ``state``, ``deliveries``, ``wait_for_deliveries`` (sync) and
  ``await_deliveries`` (async);  faults: ``set_faults``, ``clear_faults``, ``drop_session``,
  ``restart``;  clock: ``advance``, ``now``;  TLS: ``ssl_context()``, ``ca`` (issue certificates
  for an https callback endpoint the sandbox will trust).

Deadlock note: call operations wait (by default) until the callbacks they cause were delivered.
If the callback endpoint runs on the *test's* event loop, pass ``wait=False`` and then
``await pbx.await_deliveries(...)`` so the loop can serve the callbacks.

``starface_callback_receiver`` — factory fixture: a loopback XML-RPC endpoint in its own thread
that records what the sandbox posts and answers ``true`` (or a configured status/fault/delay).
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import httpx
import pytest
from aiohttp import web

from service import starface_protocol as sp
from service.sandbox.starface import SandboxOptions, SandboxThread, StarfaceSandbox
from service.tls import CertificateAuthority, client_context
from service.xmlrpc import XmlRpcError, dumps_call, dumps_fault, dumps_response, parse_call, parse_response


class ControlError(Exception):
    """The control API refused a request; carries the status and the sandbox's message."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(f"control API answered {status}: {message}")


class StarfaceSandboxHandle:
    """A running sandbox, driven through its control API (see the module docstring)."""

    def __init__(self, sandbox: StarfaceSandbox) -> None:
        self._sandbox = sandbox
        self.base_url = sandbox.base_url
        self.control_url = sandbox.control_url
        self.ca_file: Path = sandbox.ca_file
        self.ca: CertificateAuthority = sandbox.ca
        self.namespace = sandbox.pbx.namespace
        self.oauth_client_secret = sandbox.pbx.oauth_client_secret
        self.control_token = sandbox.control_token
        self._http = httpx.Client(
            base_url=self.control_url,
            headers={"Authorization": f"Bearer {self.control_token}"},
            verify=client_context(self.ca_file),
            trust_env=False,
            timeout=30.0,
        )

    def close(self) -> None:
        self._http.close()

    def ssl_context(self) -> ssl.SSLContext:
        """A client context trusting the sandbox CA (for aiohttp / httpx against ``base_url``)."""
        return client_context(self.ca_file)

    def control(
        self, method: str, path: str, body: dict[str, Any] | None = None, params: dict[str, str] | None = None
    ) -> Any:
        response = self._http.request(method, path, json=body, params=params)
        if response.status_code >= 400:
            raise ControlError(response.status_code, response.json().get("error", response.text))
        return response.json() if response.status_code != 204 else None

    # -- users and groups --------------------------------------------------------------------------

    def add_user(
        self,
        login: str,
        password: str,
        *,
        email: str | None = None,
        first_name: str = "",
        family_name: str = "",
        number: str | None = None,
        oauth_allowed: bool = False,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "login": login,
            "password": password,
            "email": email or f"{login}@example.com",
            "firstName": first_name,
            "familyName": family_name,
            "oauthAllowed": oauth_allowed,
        }
        if number is not None:
            body["number"] = number
        result: dict[str, Any] = self.control("POST", "/control/users", body)
        return result

    def update_user(self, login: str, **changes: Any) -> dict[str, Any]:
        """Keys as in the control API: password, email, firstName, familyName, number, oauthAllowed."""
        result: dict[str, Any] = self.control("PATCH", f"/control/users/{login}", changes)
        return result

    def remove_user(self, login: str) -> None:
        self.control("DELETE", f"/control/users/{login}")

    def user(self, login: str) -> dict[str, Any]:
        """REST fields plus dnd, statusText, telephonyState, oauthAllowed and the live session."""
        result: dict[str, Any] = self.control("GET", f"/control/users/{login}")
        return result

    def add_group(self, name: str, members: list[str], **numbers: str) -> dict[str, Any]:
        result: dict[str, Any] = self.control(
            "POST", "/control/groups", {"name": name, "members": members, **numbers}
        )
        return result

    def set_group_members(self, group_id: int, members: list[str]) -> dict[str, Any]:
        result: dict[str, Any] = self.control(
            "PUT", f"/control/groups/{group_id}/members", {"members": members}
        )
        return result

    def set_dnd_on_phone(self, login: str, enabled: bool) -> None:
        """DND changed on the PBX side (a phone key), not through UCI."""
        self.control("PUT", f"/control/users/{login}/dnd", {"enabled": enabled})

    def set_text_on_phone(self, login: str, text: str) -> None:
        self.control("PUT", f"/control/users/{login}/status-text", {"text": text})

    # -- calls -------------------------------------------------------------------------------------

    def place_call(
        self,
        login: str,
        *,
        direction: str = "incoming",
        remote_number: str = "+4971112345678",
        remote_name: str = "Erika Mustermann",
        group_id: str = "",
        sparse_first: bool | None = None,
        empty_first_state: bool = False,
        wait: bool = True,
    ) -> str:
        body: dict[str, Any] = {
            "login": login,
            "direction": direction,
            "remoteNumber": remote_number,
            "remoteName": remote_name,
            "groupId": group_id,
            "emptyFirstState": empty_first_state,
            "wait": wait,
        }
        if sparse_first is not None:
            body["sparseFirst"] = sparse_first
        return str(self.control("POST", "/control/calls", body)["id"])

    def answer(self, call_id: str, *, wait: bool = True) -> dict[str, Any]:
        result: dict[str, Any] = self.control("POST", f"/control/calls/{call_id}/answer", {"wait": wait})
        return result

    def hangup(self, call_id: str, *, wait: bool = True) -> dict[str, Any]:
        result: dict[str, Any] = self.control("POST", f"/control/calls/{call_id}/hangup", {"wait": wait})
        return result

    def calls(self) -> dict[str, list[dict[str, Any]]]:
        result: dict[str, list[dict[str, Any]]] = self.control("GET", "/control/calls")
        return result

    # -- reads -------------------------------------------------------------------------------------

    def history(self, login: str) -> dict[str, list[dict[str, Any]]]:
        """``{"dnd": [...], "statusText": [...]}``, each entry ``{at, value, source, session}``."""
        result: dict[str, list[dict[str, Any]]] = self.control("GET", f"/control/users/{login}/history")
        return result

    def session(self, login: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = self.control("GET", f"/control/users/{login}/session")
        except ControlError as exc:
            if exc.status == 404:
                return None
            raise
        return result

    def state(self) -> dict[str, Any]:
        result: dict[str, Any] = self.control("GET", "/control/state")
        return result

    def deliveries(self, login: str | None = None, since: int = 0) -> list[dict[str, Any]]:
        params = {"since": str(since)} | ({"login": login} if login else {})
        result: list[dict[str, Any]] = self.control("GET", "/control/deliveries", params=params)
        return result

    def wait_for_deliveries(
        self, count: int, login: str | None = None, timeout: float = 5.0
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.deliveries(login)
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.02)

    async def await_deliveries(
        self, count: int, login: str | None = None, timeout: float = 5.0
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            found = await asyncio.to_thread(self.deliveries, login)
            if len(found) >= count or time.monotonic() > deadline:
                return found
            await asyncio.sleep(0.02)

    # -- faults and clock --------------------------------------------------------------------------

    def set_faults(
        self, *, down: str | None = None, slow_seconds: float | None = None, errors: int | None = None
    ) -> dict[str, Any]:
        """``down``: "none" | "refuse" | "503"; ``slow_seconds`` per request; next ``errors`` → 500."""
        body: dict[str, Any] = {}
        if down is not None:
            body["down"] = down
        if slow_seconds is not None:
            body["slowSeconds"] = slow_seconds
        if errors is not None:
            body["errors"] = errors
        result: dict[str, Any] = self.control("PUT", "/control/faults", body)
        return result

    def clear_faults(self) -> None:
        self.control("DELETE", "/control/faults")

    def drop_session(self, login: str) -> None:
        """The PBX forgets this user's UCI session, as after a restart of that session."""
        self.control("DELETE", f"/control/users/{login}/session")

    def restart(self) -> None:
        """Every UCI session and REST token is gone; active calls are cut without events."""
        self.control("POST", "/control/restart")

    def advance(self, seconds: float) -> float:
        return float(self.control("POST", "/control/clock/advance", {"seconds": seconds})["now"])

    def now(self) -> float:
        return float(self.control("GET", "/control/clock")["now"])


@pytest.fixture
def starface_sandbox(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., StarfaceSandboxHandle]]:
    started: list[tuple[SandboxThread, StarfaceSandboxHandle]] = []

    def factory(
        *,
        tls: bool = True,
        namespace: str = "v30",
        session_timeout: float = 60.0,
        oauth_client_secret: str | None = None,
        callback_ca_file: Path | None = None,
    ) -> StarfaceSandboxHandle:
        options = SandboxOptions(
            state_dir=tmp_path_factory.mktemp("starface-sandbox"),
            tls=tls,
            namespace=namespace,
            session_timeout=session_timeout,
            oauth_client_secret=oauth_client_secret,
            callback_ca_file=callback_ca_file,
        )
        thread = SandboxThread(options)
        handle = StarfaceSandboxHandle(thread.start())
        started.append((thread, handle))
        return handle

    yield factory
    for thread, handle in started:
        handle.close()
        thread.stop()


# -- callback receiver ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ReceivedCall:
    method: str
    params: list[Any]
    query: dict[str, str]
    at: float


@dataclass
class CallbackReceiver:
    """Loopback XML-RPC endpoint; ``callback_query(...)`` gives the UCI login query parameters."""

    host: str
    port: int
    path: str
    scheme: str
    received: list[ReceivedCall] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    status: int = 200
    fault: tuple[int, str] | None = None
    delay: float = 0.0
    _changed: threading.Condition = field(default_factory=threading.Condition)

    def callback_query(self) -> dict[str, str]:
        return {
            sp.UCI_CALLBACK_HOST: self.host,
            sp.UCI_CALLBACK_PORT: str(self.port),
            sp.UCI_CALLBACK_PATH: self.path,
            sp.UCI_CALLBACK_TYPE: self.scheme,
        }

    def record(self, call: ReceivedCall) -> None:
        with self._changed:
            self.received.append(call)
            self._changed.notify_all()

    def wait_for(self, count: int, timeout: float = 5.0) -> list[ReceivedCall]:
        with self._changed:
            self._changed.wait_for(lambda: len(self.received) >= count, timeout=timeout)
            return list(self.received)


class _ReceiverThread:
    def __init__(self, receiver: CallbackReceiver, tls: ssl.SSLContext | None) -> None:
        self.receiver = receiver
        self._tls = tls
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._run, name="callback-receiver", daemon=True)

    async def _handle(self, request: web.Request) -> web.Response:
        receiver = self.receiver
        body = await request.content.read(64 * 1024 + 1)
        try:
            method, params = parse_call(body)
        except XmlRpcError as exc:
            receiver.refused.append(exc.reason)
            return web.Response(status=400)
        receiver.record(ReceivedCall(method, params, dict(request.query), time.time()))
        if receiver.delay:
            await asyncio.sleep(receiver.delay)
        if receiver.status != 200:
            return web.Response(status=receiver.status)
        payload = dumps_fault(*receiver.fault) if receiver.fault else dumps_response(True)
        return web.Response(body=payload, content_type="text/xml")

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post(self.receiver.path, self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        sock = socket.create_server((self.receiver.host, 0))
        self.receiver.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock, ssl_context=self._tls).start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._ready.set()
        self._loop.run_forever()
        self._loop.close()

    def start(self) -> CallbackReceiver:
        self._thread.start()
        if not self._ready.wait(timeout=10):
            raise TimeoutError("callback receiver did not start")
        return self.receiver

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


@pytest.fixture
def starface_callback_receiver(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., CallbackReceiver]]:
    """``make(ca=None, path="/starface/callback")``: with ``ca``, it serves https from that CA."""
    threads: list[_ReceiverThread] = []

    def factory(ca: CertificateAuthority | None = None, path: str = "/starface/callback") -> CallbackReceiver:
        tls = None
        if ca is not None:
            tls = ca.issue(["127.0.0.1"]).server_context(tmp_path_factory.mktemp("receiver-tls"))
        receiver = CallbackReceiver("127.0.0.1", 0, path, "https" if ca else "http")
        thread = _ReceiverThread(receiver, tls)
        threads.append(thread)
        return thread.start()

    yield factory
    for thread in threads:
        thread.stop()


# -- a raw client for the sandbox's own tests ------------------------------------------------------


class Creds(TypedDict):
    """``**creds`` for ``RawStarfaceClient.uci``."""

    login: str
    password: str


def hand_uci_token(login: str, password: str) -> str:
    """``login:sha512hex(login + "*" + sha512hex(password))`` spelled out, not via the protocol module."""
    inner = hashlib.sha512(password.encode()).hexdigest()
    return f"{login}:{hashlib.sha512((login + '*' + inner).encode()).hexdigest()}"


class RawStarfaceClient:
    """Speaks to the sandbox over real sockets without the gateway, to test the sandbox itself."""

    def __init__(self, pbx: StarfaceSandboxHandle, timeout: float = 10.0) -> None:
        self.pbx = pbx
        self.http = httpx.Client(
            base_url=pbx.base_url, verify=pbx.ssl_context(), trust_env=False, timeout=timeout
        )

    def close(self) -> None:
        self.http.close()

    def rest_login(self, login: str, password: str) -> str:
        nonce = self.http.get("/rest/login", headers={"X-Version": "2"}).json()["nonce"]
        inner = hashlib.sha512(password.encode()).hexdigest()
        secret = f"{login}:{hashlib.sha512((login + nonce + inner).encode()).hexdigest()}"
        response = self.http.post(
            "/rest/login",
            json={"loginType": "Internal", "nonce": nonce, "secret": secret},
            headers={"X-Version": "2"},
        )
        assert response.status_code == 200, response.text
        return str(response.json()["token"])

    def rest_get(
        self, path: str, *, token: str | None = None, bearer: str | None = None, version: bool = True
    ) -> httpx.Response:
        headers = {"X-Version": "2"} if version else {}
        if token is not None:
            headers["authToken"] = token
        if bearer is not None:
            headers["Authorization"] = f"Bearer {bearer}"
        return self.http.get(path, headers=headers)

    def oauth(self, **form: str) -> httpx.Response:
        return self.http.post(sp.OAUTH_TOKEN_PATH, data=form)

    def password_grant(self, login: str, password: str, client_secret: str | None = None) -> httpx.Response:
        return self.oauth(
            client_id="rest-client-headless",
            client_secret=self.pbx.oauth_client_secret if client_secret is None else client_secret,
            grant_type="password",
            scope="login",
            username=login,
            password=password,
        )

    def uci(
        self,
        name: str,
        *params: Any,
        login: str | None = None,
        password: str | None = None,
        jwt: str | None = None,
        query: dict[str, str] | None = None,
        namespace: str | None = None,
    ) -> httpx.Response:
        """POST ``ucp.{ns}.requests.{name}``; credentials go in the query as the contract says."""
        params_q = dict(query or {})
        if login is not None and password is not None:
            params_q[sp.UCI_AUTH_PARAM] = hand_uci_token(login, password)
        if jwt is not None:
            params_q[sp.UCI_JWT_PARAM] = jwt
        method = f"ucp.{namespace or self.pbx.namespace}.requests.{name}"
        return self.http.post("/xml-rpc", params=params_q, content=dumps_call(method, list(params)))

    def uci_value(self, name: str, *params: Any, **kwargs: Any) -> Any:
        response = self.uci(name, *params, **kwargs)
        assert response.status_code == 200, response.status_code
        return parse_response(response.content)
