"""Graph sandbox: rich notifications, delivery retries and lifecycle events (docs/protocols.md)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding as rsa_padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from service.graph.crypto import decrypt_content
from service.sandbox.tls import CertificateAuthority
from tests.fixtures.graph_sandbox import EncryptionKeypair, GraphReceiver, GraphSandboxHandle

SandboxFactory = Callable[..., GraphSandboxHandle]
ReceiverFactory = Callable[[CertificateAuthority], GraphReceiver]
PASSWORD = "Sandbox-Passw0rd!"
CHANGE_TRACKING_APP_ID = "0bf30f3b-4a52-48df-9a82-234910c4a086"


def _reference_decrypt(encrypted: dict[str, str], keypair: EncryptionKeypair) -> dict[str, Any]:
    """Decryption written from docs/protocols.md ("Rich notifications"), independent of service.graph.crypto.

    dataKey: base64 → RSA-OAEP (SHA-1, MGF1-SHA-1) → 32-byte key; dataSignature must equal
    base64(HMAC-SHA256(key, base64decode(data))); data: AES-256-CBC, IV = key[:16], PKCS7.
    """
    sha1 = hashes.SHA1()  # noqa: S303 - fixed by the protocol
    key = keypair.private_key.decrypt(
        base64.b64decode(encrypted["dataKey"]),
        rsa_padding.OAEP(mgf=rsa_padding.MGF1(algorithm=sha1), algorithm=sha1, label=None),
    )
    assert len(key) == 32
    ciphertext = base64.b64decode(encrypted["data"])
    expected = base64.b64encode(hmac.new(key, ciphertext, hashlib.sha256).digest()).decode()
    if not hmac.compare_digest(expected, encrypted["dataSignature"]):
        raise ValueError("dataSignature does not match the data: tampered, do not decrypt")
    decryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).decryptor()
    padded = decryptor.update(ciphertext) + decryptor.finalize()
    pad = padded[-1]
    assert 1 <= pad <= 16
    assert padded[-pad:] == bytes([pad]) * pad
    result: dict[str, Any] = json.loads(padded[:-pad].decode("utf-8"))
    return result


def _setup(
    graph_sandbox: SandboxFactory, graph_receiver: ReceiverFactory, users: int = 1, **options: Any
) -> tuple[GraphSandboxHandle, GraphReceiver, list[str], str]:
    handle = graph_sandbox(**options)
    receiver = graph_receiver(handle.sandbox.ca)
    ids = [handle.add_user(f"User {n}")["id"] for n in range(users)]
    handle.add_service_account("svc1@sandbox.onmicrosoft.com", PASSWORD)
    token = handle.user_token("svc1@sandbox.onmicrosoft.com", PASSWORD)
    return handle, receiver, ids, token


def _subscribe(handle: GraphSandboxHandle, token: str, body: dict[str, Any]) -> dict[str, Any]:
    response = handle.graph("POST", "subscriptions", token, body)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


def _jwks_key(handle: GraphSandboxHandle, token: str) -> Any:
    session = handle.http()
    metadata = session.get(f"{handle.base_url}/common/v2.0/.well-known/openid-configuration").json()
    keys = session.get(metadata["jwks_uri"]).json()["keys"]
    kid = jwt.get_unverified_header(token)["kid"]
    return jwt.PyJWK(next(k for k in keys if k["kid"] == kid)).key


def test_rich_notification_decrypts_per_reference(
    graph_sandbox: SandboxFactory, graph_receiver: ReceiverFactory, encryption_keypair: EncryptionKeypair
) -> None:
    handle, receiver, (user,), token = _setup(graph_sandbox, graph_receiver)
    subscription = _subscribe(handle, token, handle.subscription_body(receiver, [user], encryption_keypair))
    handle.set_teams_presence(user, "Busy", "InACall")
    receiver.wait_for(lambda posts: len(posts) >= 1)
    post = receiver.notifications[0].json()
    assert receiver.notifications[0].headers["content-type"].startswith("application/json")
    (item,) = post["value"]
    assert set(item) == {
        "subscriptionId",
        "subscriptionExpirationDateTime",
        "clientState",
        "changeType",
        "resource",
        "tenantId",
        "organizationId",
        "resourceData",
        "encryptedContent",
    }
    assert item["subscriptionId"] == subscription["id"]
    assert item["subscriptionExpirationDateTime"] == subscription["expirationDateTime"]
    assert item["clientState"] == "client-state-0123456789"
    assert item["changeType"] == "updated"
    assert item["resource"] == f"communications/presences/{user}"
    assert item["tenantId"] == item["organizationId"] == handle.tenant_id
    assert item["resourceData"] == {
        "@odata.id": f"users/{user}/presence",
        "@odata.type": "#microsoft.graph.presence",
        "id": user,
    }
    encrypted = item["encryptedContent"]
    assert encrypted["encryptionCertificateId"] == "bridge-cert-1"
    thumbprint = encryption_keypair.certificate.fingerprint(hashes.SHA1()).hex()  # noqa: S303
    assert encrypted["encryptionCertificateThumbprint"].lower() == thumbprint
    presence = _reference_decrypt(encrypted, encryption_keypair)
    assert presence["id"] == user
    assert (presence["availability"], presence["activity"]) == ("Busy", "InACall")
    # Microsoft's documented payload carries no sequenceNumber; the sandbox adds it only on request.
    assert "sequenceNumber" not in presence
    assert "statusMessage" in presence
    # The service's decryption agrees with the reference one.
    assert json.loads(decrypt_content(encrypted, encryption_keypair.private_key)) == presence
    # Tampering is detectable: the HMAC covers the ciphertext.
    forged = dict(encrypted, data=base64.b64encode(b"\0" * 32).decode())
    with pytest.raises(ValueError, match="dataSignature"):
        _reference_decrypt(forged, encryption_keypair)

    (validation_token,) = post["validationTokens"]
    claims = jwt.decode(
        validation_token,
        _jwks_key(handle, validation_token),
        algorithms=["RS256"],
        audience=handle.client_id,
        issuer=f"https://login.microsoftonline.com/{handle.tenant_id}/v2.0",
        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
    )
    assert claims["azp"] == CHANGE_TRACKING_APP_ID
    assert claims["tid"] == handle.tenant_id
    assert claims["ver"] == "2.0"
    assert claims["iat"] <= handle.now() < claims["exp"]


def test_v1_validation_tokens_are_selectable(
    graph_sandbox: SandboxFactory, graph_receiver: ReceiverFactory, encryption_keypair: EncryptionKeypair
) -> None:
    handle, receiver, (user,), token = _setup(graph_sandbox, graph_receiver)
    handle.control("PUT", "/settings", {"validationTokenVersion": "v1"})
    _subscribe(handle, token, handle.subscription_body(receiver, [user], encryption_keypair))
    handle.set_teams_presence(user, "Away", "Away")
    receiver.wait_for(lambda posts: len(posts) >= 1)
    (validation_token,) = receiver.notifications[0].json()["validationTokens"]
    claims = jwt.decode(
        validation_token,
        _jwks_key(handle, validation_token),
        algorithms=["RS256"],
        audience=handle.client_id,
        issuer=f"https://sts.windows.net/{handle.tenant_id}/",
        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
    )
    assert claims["appid"] == CHANGE_TRACKING_APP_ID
    assert claims["ver"] == "1.0"
    assert "azp" not in claims


def test_changes_together_arrive_in_one_post(
    graph_sandbox: SandboxFactory, graph_receiver: ReceiverFactory, encryption_keypair: EncryptionKeypair
) -> None:
    handle, receiver, users, token = _setup(graph_sandbox, graph_receiver, users=3, coalesce_seconds=0.5)
    _subscribe(handle, token, handle.subscription_body(receiver, users, encryption_keypair))
    app_token = handle.app_token()
    batch = {
        "requests": [
            {
                "id": str(n),
                "method": "POST",
                "url": f"/users/{user}/presence/setPresence",
                "headers": {"Content-Type": "application/json"},
                "body": {"sessionId": handle.client_id, "availability": "Busy", "activity": "InACall"},
            }
            for n, user in enumerate(users)
        ]
    }
    assert handle.graph("POST", "$batch", app_token, batch).status_code == 200
    posts = receiver.wait_for(lambda posts: sum(len(p.json()["value"]) for p in posts) >= 3)
    assert len(posts) == 1
    items = posts[0].json()["value"]
    assert sorted(i["resourceData"]["id"] for i in items) == sorted(users)
    # A fresh symmetric key for every item.
    assert len({i["encryptedContent"]["dataKey"] for i in items}) == 3
    assert len(posts[0].json()["validationTokens"]) == 1  # one per app and tenant


def test_basic_notifications_carry_no_content(
    graph_sandbox: SandboxFactory, graph_receiver: ReceiverFactory
) -> None:
    handle, receiver, (user,), token = _setup(graph_sandbox, graph_receiver)
    _subscribe(handle, token, handle.subscription_body(receiver, [user]))
    handle.set_teams_presence(user, "DoNotDisturb", "DoNotDisturb")
    receiver.wait_for(lambda posts: len(posts) >= 1)
    body = receiver.notifications[0].json()
    assert "validationTokens" not in body
    (item,) = body["value"]
    assert "encryptedContent" not in item
    assert item["resourceData"]["id"] == user


def test_only_covered_users_and_active_subscriptions_are_notified(
    graph_sandbox: SandboxFactory, graph_receiver: ReceiverFactory
) -> None:
    handle, receiver, (watched, other), token = _setup(graph_sandbox, graph_receiver, users=2)
    handle.add_service_account("svc2@sandbox.onmicrosoft.com", PASSWORD)
    token2 = handle.user_token("svc2@sandbox.onmicrosoft.com", PASSWORD)
    _subscribe(handle, token, handle.subscription_body(receiver, [watched], lifecycle=False))
    doomed = _subscribe(
        handle,
        token2,
        handle.subscription_body(receiver, [other], lifecycle=False, notificationUrl=receiver.url("old")),
    )
    handle.control("POST", f"/subscriptions/{doomed['id']}/expire")
    handle.set_teams_presence(other, "Busy", "InAMeeting")
    handle.set_teams_presence(watched, "Busy", "InAMeeting")
    receiver.wait_for(lambda posts: len(posts) >= 1)
    assert [i["resourceData"]["id"] for i in receiver.items()] == [watched]
    assert receiver.items("old") == []


def test_failed_delivery_is_retried_with_exponential_backoff(
    graph_sandbox: SandboxFactory, graph_receiver: ReceiverFactory
) -> None:
    handle, receiver, (user,), token = _setup(graph_sandbox, graph_receiver)
    subscription = _subscribe(handle, token, handle.subscription_body(receiver, [user], lifecycle=False))
    receiver.statuses.extend([500, 503])
    handle.set_teams_presence(user, "Busy", "InACall")
    # Advance only once the sandbox has scheduled the retry, or the jump would come too early.
    _wait_log(handle, lambda log: _scheduled(log) == 1)
    handle.advance(10)  # first backoff step
    _wait_log(handle, lambda log: _scheduled(log) == 2)
    handle.advance(20)  # doubled
    posts = receiver.wait_for(lambda posts: len(posts) == 3)
    _wait_log(handle, lambda log: any(e["outcome"] == "delivered" for e in log))
    assert posts[0].json()["value"] == posts[2].json()["value"]  # the same items, re-sent
    log = [e for e in handle.deliveries() if e["kind"] == "change"]
    assert [(e["attempt"], e["status"], e["outcome"]) for e in log] == [
        (1, 500, "retry-scheduled"),
        (2, 503, "retry-scheduled"),
        (3, 202, "delivered"),
    ]
    assert all(e["latencyMs"] >= 0 and e["subscriptionIds"] == [subscription["id"]] for e in log)
    gaps = [_gap(log[0]), _gap(log[1])]
    assert [round(g) for g in gaps] == [10, 20]


def _scheduled(log: list[dict[str, Any]]) -> int:
    return sum(1 for e in log if e["outcome"] == "retry-scheduled")


def _gap(entry: dict[str, Any]) -> float:
    def parse(text: str) -> float:
        return datetime.fromisoformat(text.replace("Z", "+00:00")[:26] + "+00:00").timestamp()

    return parse(entry["nextAttemptAt"]) - parse(entry["at"])


def test_slow_reply_counts_as_failure(graph_sandbox: SandboxFactory, graph_receiver: ReceiverFactory) -> None:
    # The 3 s limit, scaled down so the test does not wait 3 s: the rule is the same.
    handle, receiver, (user,), token = _setup(graph_sandbox, graph_receiver, delivery_timeout=0.3)
    _subscribe(handle, token, handle.subscription_body(receiver, [user], lifecycle=False))
    receiver.delays.append(0.8)
    handle.set_teams_presence(user, "Busy", "InACall")
    _wait_log(handle, lambda log: _scheduled(log) == 1)
    handle.advance(10)
    receiver.wait_for(lambda posts: len(posts) == 2)
    _wait_log(handle, lambda log: any(e["outcome"] == "delivered" for e in log))
    log = [e for e in handle.deliveries() if e["kind"] == "change"]
    assert (log[0]["status"], log[0]["error"], log[0]["outcome"]) == (None, "timeout", "retry-scheduled")
    assert log[0]["latencyMs"] >= 300
    assert (log[1]["status"], log[1]["outcome"]) == (202, "delivered")


def test_retries_stop_at_the_limit_on_a_compressed_clock(
    graph_sandbox: SandboxFactory, graph_receiver: ReceiverFactory
) -> None:
    handle, receiver, (user,), token = _setup(graph_sandbox, graph_receiver, max_attempts=4)
    _subscribe(handle, token, handle.subscription_body(receiver, [user], lifecycle=False))
    receiver.statuses.extend([500] * 10)
    handle.control("PUT", "/clock", {"speed": 1000})  # 10 + 20 + 40 s of backoff pass in 70 ms
    handle.set_teams_presence(user, "Busy", "InACall")
    _wait_log(handle, lambda log: any(e["outcome"] == "gave-up" for e in log))
    handle.control("PUT", "/clock", {"speed": 1})
    log = [e for e in handle.deliveries() if e["kind"] == "change"]
    assert [e["attempt"] for e in log] == [1, 2, 3, 4]
    assert log[-1]["outcome"] == "gave-up"
    assert len(receiver.notifications) == 4


def _wait_log(handle: GraphSandboxHandle, predicate: Callable[[list[dict[str, Any]]], bool]) -> None:
    deadline = time.monotonic() + 10
    while not predicate(handle.deliveries()):
        assert time.monotonic() < deadline, handle.deliveries()
        time.sleep(0.02)


def test_reauthorization_required_before_expiry(
    graph_sandbox: SandboxFactory, graph_receiver: ReceiverFactory
) -> None:
    handle, receiver, (user,), token = _setup(graph_sandbox, graph_receiver)
    subscription = _subscribe(handle, token, handle.subscription_body(receiver, [user], minutes=45))
    handle.advance(29 * 60)
    handle.advance(2 * 60)  # now inside the 15-minute lead before expiry
    receiver.wait_for(lambda posts: any(p.path == "/lifecycle" for p in posts))
    (item,) = receiver.items("lifecycle")
    assert item == {
        "subscriptionId": subscription["id"],
        "subscriptionExpirationDateTime": subscription["expirationDateTime"],
        "tenantId": handle.tenant_id,
        "clientState": "client-state-0123456789",
        "lifecycleEvent": "reauthorizationRequired",
    }
    # Renewing moves the deadline; nothing more is sent for the old one.
    token = handle.user_token("svc1@sandbox.onmicrosoft.com", PASSWORD)
    renewed = handle.graph(
        "PATCH", f"subscriptions/{subscription['id']}", token, {"expirationDateTime": handle.expiry(59)}
    )
    assert renewed.status_code == 200
    handle.set_teams_presence(user, "Busy", "InACall")
    receiver.wait_for(lambda posts: any(p.path == "/notify" for p in posts))
    assert len(receiver.items("lifecycle")) == 1


def test_revoked_consent_sends_lifecycle_and_pauses_delivery(
    graph_sandbox: SandboxFactory, graph_receiver: ReceiverFactory
) -> None:
    handle, receiver, (user,), token = _setup(graph_sandbox, graph_receiver)
    subscription = _subscribe(handle, token, handle.subscription_body(receiver, [user]))
    handle.control("POST", "/consent/revoke", {"user": "svc1@sandbox.onmicrosoft.com"})
    receiver.wait_for(lambda posts: any(p.path == "/lifecycle" for p in posts))
    assert receiver.items("lifecycle")[0]["lifecycleEvent"] == "reauthorizationRequired"
    handle.set_teams_presence(user, "Busy", "InACall")  # lost while the subscription is paused
    refused = handle.graph("POST", f"subscriptions/{subscription['id']}/reauthorize", token)
    assert refused.status_code == 403
    handle.control("POST", "/consent/grant", {"user": "svc1@sandbox.onmicrosoft.com"})
    token = handle.user_token("svc1@sandbox.onmicrosoft.com", PASSWORD)
    assert handle.graph("POST", f"subscriptions/{subscription['id']}/reauthorize", token).status_code == 204
    handle.set_teams_presence(user, "Away", "Away")
    receiver.wait_for(lambda posts: any(p.path == "/notify" for p in posts))
    (item,) = receiver.items("notify")  # the change made while paused was never sent
    assert item["resourceData"]["id"] == user
    _wait_log(handle, lambda log: [e["outcome"] for e in log if e["kind"] == "change"] == ["delivered"])


def test_revoked_sessions_send_lifecycle(
    graph_sandbox: SandboxFactory, graph_receiver: ReceiverFactory
) -> None:
    handle, receiver, (user,), token = _setup(graph_sandbox, graph_receiver)
    subscription = _subscribe(handle, token, handle.subscription_body(receiver, [user]))
    service_account = handle.control("GET", "/users")["value"][-1]
    handle.control("POST", f"/users/{service_account['id']}/revoke-sessions")
    receiver.wait_for(lambda posts: any(p.path == "/lifecycle" for p in posts))
    assert receiver.items("lifecycle")[0]["subscriptionId"] == subscription["id"]
    # The token issued before the revocation no longer reauthorizes.
    assert handle.graph("POST", f"subscriptions/{subscription['id']}/reauthorize", token).status_code == 403


def test_the_sequence_number_variant_and_a_late_redelivery_of_an_older_notification(
    graph_sandbox: SandboxFactory, graph_receiver: ReceiverFactory, encryption_keypair: EncryptionKeypair
) -> None:
    handle, receiver, (user,), token = _setup(graph_sandbox, graph_receiver, sequence_numbers=True)
    _subscribe(handle, token, handle.subscription_body(receiver, [user], encryption_keypair))
    handle.set_teams_presence(user, "Busy", "InACall")
    receiver.wait_for(lambda posts: len(posts) >= 1)
    handle.set_teams_presence(user, "Available", "Available")
    receiver.wait_for(lambda posts: len(posts) >= 2)
    assert handle.control("POST", f"/users/{user}/redeliver", {"back": 2})["redelivered"] == 2
    receiver.wait_for(lambda posts: len(posts) >= 3)
    first, second, late = (
        _reference_decrypt(p.json()["value"][0]["encryptedContent"], encryption_keypair)
        for p in receiver.notifications[:3]
    )
    assert late == first  # the very same older notification, arriving after the newer one
    assert int(first["sequenceNumber"]) < int(second["sequenceNumber"])
    for bad in ({"back": 0}, {"back": "2"}, {"back": 9}):
        with pytest.raises(AssertionError, match=r" (400|404) "):
            handle.control("POST", f"/users/{user}/redeliver", bad)


def test_a_silenced_subscription_drops_changes_unannounced_until_resumed(
    graph_sandbox: SandboxFactory, graph_receiver: ReceiverFactory, encryption_keypair: EncryptionKeypair
) -> None:
    handle, receiver, (user, other), token = _setup(graph_sandbox, graph_receiver, users=2)
    subscription = _subscribe(
        handle, token, handle.subscription_body(receiver, [user, other], encryption_keypair)
    )
    handle.set_teams_presence(user, "Busy", "InACall")
    receiver.wait_for(lambda posts: len(posts) >= 1)
    silenced = handle.control("POST", f"/subscriptions/{subscription['id']}/silence", {})
    assert silenced["silent"] is True
    assert silenced["delivering"] is True  # nothing about the subscription tells the silence
    handle.set_teams_presence(user, "Available", "Available")
    handle.set_teams_presence(other, "DoNotDisturb", "Presenting")
    # Presence keeps changing for readers while nothing is sent, not even to the lifecycle URL.
    read = handle.graph("POST", "communications/getPresencesByUserId", handle.app_token(), {"ids": [user]})
    assert (read.json()["value"][0]["availability"], read.json()["value"][0]["activity"]) == (
        "Available",
        "Available",
    )
    deliveries = handle.control("GET", "/deliveries?since=0")["value"]
    assert [d["kind"] for d in deliveries if d["kind"] != "validation"] == ["change"]
    assert len(receiver.notifications) == 1
    [listed] = handle.control("GET", "/subscriptions")["value"]
    assert listed["silencedChanges"] == 2
    resumed = handle.control("POST", f"/subscriptions/{subscription['id']}/silence", {"silent": False})
    assert resumed["silent"] is False
    handle.set_teams_presence(user, "Away", "Away")
    receiver.wait_for(lambda posts: len(posts) >= 2)
    presence = _reference_decrypt(
        receiver.notifications[1].json()["value"][0]["encryptedContent"], encryption_keypair
    )
    assert (presence["availability"], presence["activity"]) == ("Away", "Away")
    with pytest.raises(AssertionError, match=r" 400 "):
        handle.control("POST", f"/subscriptions/{subscription['id']}/silence", {"silent": "yes"})
