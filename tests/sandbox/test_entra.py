"""Entra ID stand-in: metadata, JWKS and every grant MSAL uses, over real HTTPS."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from typing import Any

import jwt
import pytest

from tests.fixtures.graph_sandbox import GRAPH_DEFAULT_SCOPE, GraphSandboxHandle

SandboxFactory = Callable[..., GraphSandboxHandle]
PASSWORD = "Sandbox-Passw0rd!"


def _verify(handle: GraphSandboxHandle, token: str, audience: str) -> dict[str, Any]:
    """Verify a sandbox JWT with the published JWKS (as a relying party would), real time ignored."""
    session = handle.http()
    metadata = session.get(f"{handle.authority}/v2.0/.well-known/openid-configuration").json()
    keys = session.get(metadata["jwks_uri"]).json()["keys"]
    kid = jwt.get_unverified_header(token)["kid"]
    key = jwt.PyJWK(next(k for k in keys if k["kid"] == kid))
    claims: dict[str, Any] = jwt.decode(
        token,
        key.key,
        algorithms=["RS256"],
        audience=audience,
        options={"verify_exp": False, "verify_iat": False},
    )
    return claims


def _ropc(handle: GraphSandboxHandle, username: str, password: str, scopes: list[str] | None = None) -> Any:
    app = handle.public_app()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return app, app.acquire_token_by_username_password(
            username, password, scopes=scopes or ["Presence.Read.All"]
        )


def test_openid_metadata_and_jwks(graph_sandbox: SandboxFactory) -> None:
    handle = graph_sandbox()
    session = handle.http()
    metadata = session.get(f"{handle.authority}/v2.0/.well-known/openid-configuration").json()
    assert metadata["token_endpoint"] == f"{handle.authority}/oauth2/v2.0/token"
    assert metadata["device_authorization_endpoint"] == f"{handle.authority}/oauth2/v2.0/devicecode"
    assert metadata["issuer"] == f"https://login.microsoftonline.com/{handle.tenant_id}/v2.0"
    common = session.get(f"{handle.base_url}/common/v2.0/.well-known/openid-configuration").json()
    assert common["issuer"] == "https://login.microsoftonline.com/{tenantid}/v2.0"
    keys = session.get(common["jwks_uri"]).json()["keys"]
    assert keys
    for key in keys:
        assert (key["kty"], key["use"]) == ("RSA", "sig")
        assert key["kid"]
        assert key["n"]
        assert key["x5c"]
    unknown = session.get(f"{handle.base_url}/no-such-tenant/v2.0/.well-known/openid-configuration")
    assert unknown.status_code == 400
    assert unknown.json()["error"] == "invalid_tenant"
    assert unknown.json()["error_codes"] == [90002]


def test_client_credentials_token_carries_configured_roles(graph_sandbox: SandboxFactory) -> None:
    handle = graph_sandbox()
    result = handle.confidential_app().acquire_token_for_client(scopes=[GRAPH_DEFAULT_SCOPE])
    claims = _verify(handle, result["access_token"], "https://graph.microsoft.com")
    assert claims["iss"] == f"https://sts.windows.net/{handle.tenant_id}/"
    assert claims["tid"] == handle.tenant_id
    assert claims["appid"] == handle.client_id
    assert claims["ver"] == "1.0"
    assert claims["idtyp"] == "app"
    assert sorted(claims["roles"]) == ["Presence.Read.All", "Presence.ReadWrite.All", "User.Read.All"]
    assert "scp" not in claims
    assert "upn" not in claims
    assert claims["nbf"] <= claims["iat"] < claims["exp"] == claims["iat"] + result["expires_in"]

    handle.control("PATCH", f"/apps/{handle.client_id}", {"applicationPermissions": ["Presence.Read.All"]})
    narrowed = handle.confidential_app().acquire_token_for_client(scopes=[GRAPH_DEFAULT_SCOPE])
    assert _verify(handle, narrowed["access_token"], "https://graph.microsoft.com")["roles"] == [
        "Presence.Read.All"
    ]


def test_client_credentials_errors_have_entra_shape(graph_sandbox: SandboxFactory) -> None:
    handle = graph_sandbox()
    wrong = handle.confidential_app(client_secret="not-the-secret").acquire_token_for_client(
        scopes=[GRAPH_DEFAULT_SCOPE]
    )
    assert wrong["error"] == "invalid_client"
    assert wrong["error_codes"] == [7000215]
    assert wrong["error_description"].startswith("AADSTS7000215: ")
    unknown = handle.confidential_app(
        client_id="00000000-0000-0000-0000-00000000abcd"
    ).acquire_token_for_client(scopes=[GRAPH_DEFAULT_SCOPE])
    assert unknown["error"] == "unauthorized_client"
    assert unknown["error_codes"] == [700016]
    not_default = handle.confidential_app().acquire_token_for_client(
        scopes=["https://graph.microsoft.com/Presence.Read.All"]
    )
    assert not_default["error"] == "invalid_scope"
    assert not_default["error_codes"] == [1002012]


def test_username_password_gives_delegated_token(graph_sandbox: SandboxFactory) -> None:
    handle = graph_sandbox()
    account = handle.add_service_account("svc-presence01@sandbox.onmicrosoft.com", PASSWORD)
    app, result = _ropc(handle, "svc-presence01@sandbox.onmicrosoft.com", PASSWORD)
    assert "access_token" in result, result
    claims = _verify(handle, result["access_token"], "https://graph.microsoft.com")
    assert claims["idtyp"] == "user"
    assert claims["oid"] == account["id"]
    assert claims["upn"] == "svc-presence01@sandbox.onmicrosoft.com"
    assert "Presence.Read.All" in claims["scp"].split()
    assert claims["appid"] == handle.client_id
    assert claims["tid"] == handle.tenant_id
    assert "roles" not in claims
    id_claims = result["id_token_claims"]
    assert id_claims["preferred_username"] == "svc-presence01@sandbox.onmicrosoft.com"
    assert id_claims["aud"] == handle.client_id
    assert id_claims["ver"] == "2.0"
    assert app.get_accounts()[0]["username"] == "svc-presence01@sandbox.onmicrosoft.com"
    assert result["refresh_token"]  # MSAL asked for offline_access
    cached = app.acquire_token_silent(["Presence.Read.All"], account=app.get_accounts()[0])
    assert cached is not None
    assert cached["access_token"] == result["access_token"]


def test_username_password_rejections(graph_sandbox: SandboxFactory) -> None:
    handle = graph_sandbox()
    handle.add_service_account("svc@sandbox.onmicrosoft.com", PASSWORD)
    _, wrong = _ropc(handle, "svc@sandbox.onmicrosoft.com", "wrong")
    assert wrong["error"] == "invalid_grant"
    assert wrong["error_codes"] == [50126]
    _, unknown = _ropc(handle, "nobody@sandbox.onmicrosoft.com", PASSWORD)
    assert unknown["error_codes"] == [50034]


def test_username_password_refused_for_mfa_account(graph_sandbox: SandboxFactory) -> None:
    handle = graph_sandbox()
    handle.add_service_account("mfa@sandbox.onmicrosoft.com", PASSWORD, mfa_required=True)
    _, result = _ropc(handle, "mfa@sandbox.onmicrosoft.com", PASSWORD)
    assert "access_token" not in result
    assert result["error"] == "invalid_grant"
    assert result["error_codes"] == [50076]
    assert result["suberror"] == "basic_action"
    assert result["error_description"].startswith("AADSTS50076: Due to a configuration change")
    assert "access_token" in json.loads(result["claims"])
    # The raw answer, as any HTTP client sees it.
    raw = handle.http().post(
        f"{handle.authority}/oauth2/v2.0/token",
        data={
            "grant_type": "password",
            "client_id": handle.client_id,
            "username": "mfa@sandbox.onmicrosoft.com",
            "password": PASSWORD,
            "scope": "Presence.Read.All offline_access",
        },
        headers={"client-request-id": "7e1c0f2a-0000-4000-8000-000000000001"},
    )
    assert raw.status_code == 400
    body = raw.json()
    assert set(body) >= {
        "error",
        "error_description",
        "error_codes",
        "timestamp",
        "trace_id",
        "correlation_id",
        "error_uri",
        "suberror",
        "claims",
    }
    assert body["correlation_id"] == "7e1c0f2a-0000-4000-8000-000000000001"
    assert "Correlation ID: 7e1c0f2a-0000-4000-8000-000000000001" in body["error_description"]


def test_device_code_approved_through_control_api(graph_sandbox: SandboxFactory) -> None:
    handle = graph_sandbox()
    # Device code is how an MFA-protected service account signs in: MFA happens in the browser.
    account = handle.add_service_account("svc-mfa@sandbox.onmicrosoft.com", PASSWORD, mfa_required=True)
    app = handle.public_app()
    flow = app.initiate_device_flow(scopes=["Presence.Read.All"])
    assert flow["verification_uri"] == f"{handle.base_url}/devicelogin"
    assert flow["user_code"] in flow["message"]
    pending = app.acquire_token_by_device_flow(flow, exit_condition=lambda _flow: True)
    assert pending["error"] == "authorization_pending"
    assert pending["error_codes"] == [70016]
    handle.control(
        "POST", f"/device-codes/{flow['user_code']}/approve", {"user": account["userPrincipalName"]}
    )
    flow["latest_attempt_at"] = 0  # polled once already; the interval is irrelevant to the sandbox
    result = app.acquire_token_by_device_flow(flow, exit_condition=lambda _flow: True)
    assert "access_token" in result, result
    claims = _verify(handle, result["access_token"], "https://graph.microsoft.com")
    assert claims["oid"] == account["id"]
    assert "mfa" in claims["amr"]
    again = app.acquire_token_by_device_flow(flow, exit_condition=lambda _flow: True)
    assert again["error"] == "invalid_grant"


def test_device_code_expires_on_the_sandbox_clock(graph_sandbox: SandboxFactory) -> None:
    handle = graph_sandbox()
    handle.add_service_account("svc@sandbox.onmicrosoft.com", PASSWORD)
    app = handle.public_app()
    flow = app.initiate_device_flow(scopes=["Presence.Read.All"])
    handle.advance(flow["expires_in"] + 1)
    result = app.acquire_token_by_device_flow(flow, exit_condition=lambda _flow: True)
    assert result["error"] == "expired_token"
    assert result["error_codes"] == [70020]


def test_refresh_token_works_until_sessions_are_revoked(graph_sandbox: SandboxFactory) -> None:
    handle = graph_sandbox()
    account = handle.add_service_account("svc@sandbox.onmicrosoft.com", PASSWORD)
    app, first = _ropc(handle, "svc@sandbox.onmicrosoft.com", PASSWORD)
    user = app.get_accounts()[0]
    refreshed = app.acquire_token_silent(["Presence.Read.All"], account=user, force_refresh=True)
    assert refreshed is not None
    assert refreshed["token_source"] == "identity_provider"
    assert refreshed["access_token"] != first["access_token"]
    handle.control("POST", f"/users/{account['id']}/revoke-sessions")
    revoked = app.acquire_token_silent_with_error(["Presence.Read.All"], account=user, force_refresh=True)
    assert revoked is not None
    assert revoked["error"] == "invalid_grant"
    assert revoked["error_codes"] == [50173]


def test_mfa_requirement_added_later_blocks_refresh(graph_sandbox: SandboxFactory) -> None:
    handle = graph_sandbox()
    account = handle.add_service_account("svc@sandbox.onmicrosoft.com", PASSWORD)
    app, _ = _ropc(handle, "svc@sandbox.onmicrosoft.com", PASSWORD)
    handle.control("PATCH", f"/users/{account['id']}", {"mfaRequired": True})
    result = app.acquire_token_silent_with_error(
        ["Presence.Read.All"], account=app.get_accounts()[0], force_refresh=True
    )
    assert result is not None
    assert result["error_codes"] == [50076]


def test_revoked_consent_refuses_delegated_tokens(graph_sandbox: SandboxFactory) -> None:
    handle = graph_sandbox()
    handle.add_service_account("svc@sandbox.onmicrosoft.com", PASSWORD)
    handle.control("POST", "/consent/revoke", {"user": "svc@sandbox.onmicrosoft.com"})
    _, refused = _ropc(handle, "svc@sandbox.onmicrosoft.com", PASSWORD)
    assert refused["error"] == "invalid_grant"
    assert refused["error_codes"] == [65001]
    assert refused["suberror"] == "consent_required"
    handle.control("POST", "/consent/grant", {"user": "svc@sandbox.onmicrosoft.com"})
    _, granted = _ropc(handle, "svc@sandbox.onmicrosoft.com", PASSWORD)
    assert "access_token" in granted
    # A scope the app was never granted needs consent as well.
    _, unconsented = _ropc(handle, "svc@sandbox.onmicrosoft.com", PASSWORD, ["Presence.ReadWrite"])
    assert unconsented["error_codes"] == [65001]


def test_signing_key_rotation_keeps_old_tokens_valid(graph_sandbox: SandboxFactory) -> None:
    handle = graph_sandbox()
    old = handle.app_token()
    new_kid = handle.control("POST", "/signing-keys/rotate")["kid"]
    keys = handle.http().get(f"{handle.base_url}/common/discovery/v2.0/keys").json()["keys"]
    assert len(keys) == 2
    assert new_kid in {k["kid"] for k in keys}
    fresh = handle.app_token()
    assert jwt.get_unverified_header(fresh)["kid"] == new_kid
    assert jwt.get_unverified_header(old)["kid"] != new_kid
    for token in (old, fresh):
        assert handle.graph("GET", "users", token).status_code == 200


def test_access_token_expires_on_the_sandbox_clock(graph_sandbox: SandboxFactory) -> None:
    handle = graph_sandbox()
    token = handle.app_token()
    assert handle.graph("GET", "users", token).status_code == 200
    handle.advance(3599 + 301)  # lifetime plus Entra's five minutes of clock skew
    response = handle.graph("GET", "users", token)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "InvalidAuthenticationToken"
    assert "expired" in response.json()["error"]["message"]
    assert "Bearer" in response.headers["WWW-Authenticate"]
    assert handle.graph("GET", "users", None).json()["error"]["message"] == "Access token is empty."


@pytest.mark.parametrize("segment", ["common", "organizations"])
def test_user_realm_answers_managed(graph_sandbox: SandboxFactory, segment: str) -> None:
    handle = graph_sandbox()
    handle.add_service_account("svc@sandbox.onmicrosoft.com", PASSWORD)
    realm = handle.http().get(
        f"{handle.base_url}/common/userrealm/svc@sandbox.onmicrosoft.com?api-version=1.0"
    )
    assert realm.json()["account_type"] == "Managed"
    metadata = handle.http().get(f"{handle.base_url}/{segment}/v2.0/.well-known/openid-configuration")
    assert metadata.status_code == 200


def test_device_login_page_signs_a_person_in(graph_sandbox: SandboxFactory) -> None:
    handle = graph_sandbox()
    account = handle.add_service_account("svc@sandbox.onmicrosoft.com", PASSWORD)
    app = handle.public_app()
    flow = app.initiate_device_flow(scopes=["Presence.Read.All"])
    page = f"{handle.base_url}/devicelogin"
    form = {"user_code": flow["user_code"], "username": "svc@sandbox.onmicrosoft.com"}
    wrong = handle.http().post(page, data={**form, "password": "nope"})
    assert "Sign-in failed" in wrong.text
    assert app.acquire_token_by_device_flow(flow, exit_condition=lambda _flow: True)["error"] == (
        "authorization_pending"
    )
    right = handle.http().post(page, data={**form, "password": PASSWORD})
    assert "Signed in" in right.text
    flow["latest_attempt_at"] = 0
    result = app.acquire_token_by_device_flow(flow, exit_condition=lambda _flow: True)
    assert _verify(handle, result["access_token"], "https://graph.microsoft.com")["oid"] == account["id"]
