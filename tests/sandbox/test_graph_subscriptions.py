"""Graph sandbox: presence subscription rules and the validation handshake (docs/protocols.md)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from typing import Any

import requests

from service.sandbox.tls import CertificateAuthority
from tests.fixtures.graph_sandbox import EncryptionKeypair, GraphReceiver, GraphSandboxHandle

SandboxFactory = Callable[..., GraphSandboxHandle]
ReceiverFactory = Callable[[CertificateAuthority], GraphReceiver]
PASSWORD = "Sandbox-Passw0rd!"


def _setup(
    graph_sandbox: SandboxFactory, graph_receiver: ReceiverFactory, **options: Any
) -> tuple[GraphSandboxHandle, GraphReceiver, str, str]:
    """A sandbox, a receiver, one monitored user and a delegated service-account token."""
    handle = graph_sandbox(**options)
    receiver = graph_receiver(handle.sandbox.ca)
    user = handle.add_user("Anna Alpha")["id"]
    handle.add_service_account("svc1@sandbox.onmicrosoft.com", PASSWORD)
    token = handle.user_token("svc1@sandbox.onmicrosoft.com", PASSWORD)
    return handle, receiver, user, token


def _epoch(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")[:26] + "+00:00").timestamp()


def _error(response: requests.Response) -> dict[str, Any]:
    """The ``error`` object of a Graph error answer, after checking Graph's exact shape."""
    body = response.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert set(error) == {"code", "message", "innerError"}
    assert set(error["innerError"]) >= {"date", "request-id"}
    return error


def test_app_only_token_cannot_subscribe(
    graph_sandbox: SandboxFactory, graph_receiver: ReceiverFactory
) -> None:
    handle, receiver, user, _ = _setup(graph_sandbox, graph_receiver)
    response = handle.graph(
        "POST", "subscriptions", handle.app_token(), handle.subscription_body(receiver, [user])
    )
    assert response.status_code == 403
    assert "Forbidden" in _error(response)["message"]
    assert receiver.validations == []  # refused before Graph calls the endpoint


def test_delegated_token_needs_presence_read_all(
    graph_sandbox: SandboxFactory, graph_receiver: ReceiverFactory
) -> None:
    handle, receiver, user, _ = _setup(graph_sandbox, graph_receiver)
    narrow = handle.control("POST", "/apps", {"delegatedPermissions": ["User.Read"]})
    token = handle.user_token("svc1@sandbox.onmicrosoft.com", PASSWORD, ["User.Read"], narrow["clientId"])
    response = handle.graph("POST", "subscriptions", token, handle.subscription_body(receiver, [user]))
    assert response.status_code == 403
    assert "Presence.Read.All" in _error(response)["message"]


def test_created_subscription_shape(
    graph_sandbox: SandboxFactory, graph_receiver: ReceiverFactory, encryption_keypair: EncryptionKeypair
) -> None:
    handle, receiver, user, token = _setup(graph_sandbox, graph_receiver)
    body = handle.subscription_body(receiver, [user], encryption_keypair)
    response = handle.graph("POST", "subscriptions", token, body)
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["resource"] == body["resource"]
    assert created["changeType"] == "updated"
    assert created["applicationId"] == handle.client_id
    assert created["clientState"] == body["clientState"]
    assert created["includeResourceData"] is True
    assert created["encryptionCertificateId"] == "bridge-cert-1"
    listed = handle.graph("GET", "subscriptions", token).json()["value"]
    assert [s["id"] for s in listed] == [created["id"]]
    assert listed[0]["clientState"] is None  # never returned by reads
    fetched = handle.graph("GET", f"subscriptions/{created['id']}", token).json()
    assert fetched["expirationDateTime"] == created["expirationDateTime"]


def test_resource_forms_and_650_ids(graph_sandbox: SandboxFactory, graph_receiver: ReceiverFactory) -> None:
    handle, receiver, user, token = _setup(graph_sandbox, graph_receiver)
    many = [str(uuid.uuid4()) for _ in range(651)]
    too_many = handle.graph("POST", "subscriptions", token, handle.subscription_body(receiver, many))
    assert too_many.status_code == 400
    assert "650" in _error(too_many)["message"]
    for resource in (
        "/users/abc/presence",
        "/communications/presences?$filter=id eq 'x'",
        f"/communications/presences?$filter=id in ('{user}')&$select=availability",
        "/communications/presences/not-a-guid",
    ):
        bad = handle.graph(
            "POST", "subscriptions", token, handle.subscription_body(receiver, [user], resource=resource)
        )
        assert bad.status_code == 400, resource
    bulk = handle.graph(
        "POST", "subscriptions", token, handle.subscription_body(receiver, [*many[:649], user])
    )
    assert bulk.status_code == 201, bulk.text
    handle.add_service_account("svc2@sandbox.onmicrosoft.com", PASSWORD)
    token2 = handle.user_token("svc2@sandbox.onmicrosoft.com", PASSWORD)
    single = handle.graph(
        "POST",
        "subscriptions",
        token2,
        handle.subscription_body(receiver, [user], resource=f"communications/presences/{user}"),
    )
    assert single.status_code == 201, single.text


def test_one_subscription_per_app_per_user(
    graph_sandbox: SandboxFactory, graph_receiver: ReceiverFactory
) -> None:
    handle, receiver, user, token = _setup(graph_sandbox, graph_receiver)
    first = handle.graph("POST", "subscriptions", token, handle.subscription_body(receiver, [user]))
    assert first.status_code == 201
    other_user = handle.add_user("Bert Beta")["id"]
    duplicate = handle.graph("POST", "subscriptions", token, handle.subscription_body(receiver, [other_user]))
    assert duplicate.status_code == 409
    assert _error(duplicate)["message"] == (
        f"Subscription Id {first.json()['id']} already exists for the requested combination"
    )
    # Another application may hold its own subscription for the same delegated user.
    second_app = handle.control("POST", "/apps", {"delegatedPermissions": ["Presence.Read.All"]})
    token_app2 = handle.user_token("svc1@sandbox.onmicrosoft.com", PASSWORD, client_id=second_app["clientId"])
    assert (
        handle.graph(
            "POST", "subscriptions", token_app2, handle.subscription_body(receiver, [user])
        ).status_code
        == 201
    )
    assert handle.graph("DELETE", f"subscriptions/{first.json()['id']}", token).status_code == 204
    assert handle.graph("GET", f"subscriptions/{first.json()['id']}", token).status_code == 404
    assert (
        handle.graph("POST", "subscriptions", token, handle.subscription_body(receiver, [user])).status_code
        == 201
    )


def test_property_rules(
    graph_sandbox: SandboxFactory, graph_receiver: ReceiverFactory, encryption_keypair: EncryptionKeypair
) -> None:
    handle, receiver, user, token = _setup(graph_sandbox, graph_receiver)
    cases: list[dict[str, Any]] = [
        {"changeType": "created"},
        {"changeType": "updated,deleted"},
        {"includeResourceData": True},  # no certificate
        {"includeResourceData": True, "encryptionCertificate": encryption_keypair.certificate_b64},  # no id
        {
            "includeResourceData": True,
            "encryptionCertificate": "bm90IGEgY2VydA==",
            "encryptionCertificateId": "x",
        },
        {"clientState": "x" * 129},
        {"notificationUrl": receiver.url("notify").replace("https://", "http://")},
        {"lifecycleNotificationUrl": receiver.url("lifecycle").replace("https://", "http://")},
        {"expirationDateTime": None},
        {"resource": None},
    ]
    for overrides in cases:
        body = handle.subscription_body(receiver, [user], **overrides)
        body = {k: v for k, v in body.items() if v is not None}
        response = handle.graph("POST", "subscriptions", token, body)
        assert response.status_code == 400, (overrides, response.text)
        _error(response)
    assert receiver.validations == []
    ok = handle.graph(
        "POST", "subscriptions", token, handle.subscription_body(receiver, [user], clientState="x" * 128)
    )
    assert ok.status_code == 201


def test_expiration_limits(graph_sandbox: SandboxFactory, graph_receiver: ReceiverFactory) -> None:
    handle, receiver, user, token = _setup(graph_sandbox, graph_receiver)
    too_long = handle.graph(
        "POST", "subscriptions", token, handle.subscription_body(receiver, [user], minutes=61)
    )
    assert too_long.status_code == 400
    assert _error(too_long)["message"] == "Subscription expiration can only be 60 minutes in the future."
    now = handle.now()
    short = handle.graph(
        "POST", "subscriptions", token, handle.subscription_body(receiver, [user], minutes=10)
    )
    assert short.status_code == 201
    assert abs(_epoch(short.json()["expirationDateTime"]) - (now + 45 * 60)) < 30
    renewed = handle.graph(
        "PATCH", f"subscriptions/{short.json()['id']}", token, {"expirationDateTime": handle.expiry(55)}
    )
    assert renewed.status_code == 200
    assert abs(_epoch(renewed.json()["expirationDateTime"]) - (handle.now() + 55 * 60)) < 30


def test_expired_subscription_is_gone(
    graph_sandbox: SandboxFactory, graph_receiver: ReceiverFactory, encryption_keypair: EncryptionKeypair
) -> None:
    handle, receiver, user, token = _setup(graph_sandbox, graph_receiver)
    created = handle.graph(
        "POST",
        "subscriptions",
        token,
        handle.subscription_body(receiver, [user], encryption_keypair, minutes=45),
    ).json()
    handle.advance(45 * 60 + 1)
    assert handle.graph("GET", f"subscriptions/{created['id']}", token).status_code == 404
    # A fresh token (the old one is near its end) changes nothing: the subscription is gone.
    fresh = handle.user_token("svc1@sandbox.onmicrosoft.com", PASSWORD)
    patch = handle.graph(
        "PATCH", f"subscriptions/{created['id']}", fresh, {"expirationDateTime": handle.expiry(50)}
    )
    assert patch.status_code == 404
    assert _error(patch)["code"] == "ResourceNotFound"
    assert handle.graph("POST", f"subscriptions/{created['id']}/reauthorize", fresh).status_code == 404
    assert handle.graph("GET", "subscriptions", fresh).json()["value"] == []
    # A new subscription by the same user and app is allowed again.
    again = handle.graph("POST", "subscriptions", fresh, handle.subscription_body(receiver, [user]))
    assert again.status_code == 201
    # Only the live subscription is notified; the expired one stays silent.
    handle.set_teams_presence(user, "Busy", "InACall")
    receiver.wait_for(lambda posts: any(p.path == "/notify" for p in posts))
    assert [i["subscriptionId"] for i in receiver.items("notify")] == [again.json()["id"]]


def test_reauthorize_and_patch_must_be_ten_minutes_apart(
    graph_sandbox: SandboxFactory, graph_receiver: ReceiverFactory
) -> None:
    handle, receiver, user, token = _setup(graph_sandbox, graph_receiver)
    sid = handle.graph("POST", "subscriptions", token, handle.subscription_body(receiver, [user])).json()[
        "id"
    ]
    assert handle.graph("POST", f"subscriptions/{sid}/reauthorize", token).status_code == 204
    refused = handle.graph("PATCH", f"subscriptions/{sid}", token, {"expirationDateTime": handle.expiry(59)})
    assert refused.status_code == 409
    assert "10 minutes" in _error(refused)["message"]
    handle.advance(10 * 60)
    token = handle.user_token("svc1@sandbox.onmicrosoft.com", PASSWORD)
    assert (
        handle.graph(
            "PATCH", f"subscriptions/{sid}", token, {"expirationDateTime": handle.expiry(59)}
        ).status_code
        == 200
    )
    assert handle.graph("POST", f"subscriptions/{sid}/reauthorize", token).status_code == 409
    handle.advance(10 * 60)
    assert handle.graph("POST", f"subscriptions/{sid}/reauthorize", token).status_code == 204


def test_patch_cannot_add_lifecycle_url(
    graph_sandbox: SandboxFactory, graph_receiver: ReceiverFactory
) -> None:
    handle, receiver, user, token = _setup(graph_sandbox, graph_receiver)
    sid = handle.graph(
        "POST", "subscriptions", token, handle.subscription_body(receiver, [user], lifecycle=False)
    ).json()["id"]
    response = handle.graph(
        "PATCH", f"subscriptions/{sid}", token, {"lifecycleNotificationUrl": receiver.url("lifecycle")}
    )
    assert response.status_code == 400


def test_validation_handshake_on_both_urls(
    graph_sandbox: SandboxFactory, graph_receiver: ReceiverFactory
) -> None:
    handle, receiver, user, token = _setup(graph_sandbox, graph_receiver)
    response = handle.graph("POST", "subscriptions", token, handle.subscription_body(receiver, [user]))
    assert response.status_code == 201
    assert [v.path for v in receiver.validations] == ["/notify", "/lifecycle"]
    for validation in receiver.validations:
        assert validation.body == b""
        assert validation.headers["content-type"].startswith("text/plain")
        # The token is opaque and needs URL-decoding: it has spaces and colons.
        assert validation.query["validationToken"].startswith("Validation: Testing client application")
    log = handle.deliveries()
    assert [e["outcome"] for e in log if e["kind"] == "validation"] == ["validated", "validated"]


def test_validation_handshake_failures(
    graph_sandbox: SandboxFactory, graph_receiver: ReceiverFactory
) -> None:
    handle, receiver, user, token = _setup(graph_sandbox, graph_receiver, handshake_timeout=0.5)
    expectations = [
        ("notify", "wrong", "must exactly match validationToken"),
        ("notify", "status:500", "HTTP status code is 'InternalServerError'"),
        ("notify", "json", "text/plain"),
        ("notify", "slow:1.5", "timed out"),
        ("lifecycle", "status:403", "HTTP status code is 'Forbidden'"),
    ]
    for path, mode, message in expectations:
        receiver.validation_mode.clear()
        receiver.validation_mode[path] = mode
        response = handle.graph("POST", "subscriptions", token, handle.subscription_body(receiver, [user]))
        assert response.status_code == 400, (mode, response.text)
        error = _error(response)
        assert error["code"] == "ValidationError"
        assert message in error["message"], (mode, error)
    assert handle.graph("GET", "subscriptions", token).json()["value"] == []
    unreachable = handle.subscription_body(receiver, [user], notificationUrl="https://127.0.0.1:1/notify")
    assert handle.graph("POST", "subscriptions", token, unreachable).status_code == 400
