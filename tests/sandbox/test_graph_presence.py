"""Graph sandbox: users and presence (sessions, aggregation, timeouts, permissions, sequence)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from tests.fixtures.graph_sandbox import GraphSandboxHandle

SandboxFactory = Callable[..., GraphSandboxHandle]
PASSWORD = "Sandbox-Passw0rd!"


def _presence(handle: GraphSandboxHandle, token: str, user_id: str) -> dict[str, Any]:
    response = handle.graph("GET", f"users/{user_id}/presence", token)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def _set(
    handle: GraphSandboxHandle,
    token: str,
    user_id: str,
    availability: str,
    activity: str,
    duration: str | None = "PT1H",
    session_id: str | None = None,
) -> Any:
    body: dict[str, Any] = {
        "sessionId": session_id or handle.client_id,
        "availability": availability,
        "activity": activity,
    }
    if duration is not None:
        body["expirationDuration"] = duration
    return handle.graph("POST", f"users/{user_id}/presence/setPresence", token, body)


def _state(presence: dict[str, Any]) -> tuple[str, str]:
    return presence["availability"], presence["activity"]


def test_users_list_filter_and_get(graph_sandbox: SandboxFactory) -> None:
    handle = graph_sandbox()
    anna = handle.add_user("Anna Alpha", mail="anna@contoso.test")
    handle.add_user("Bert Beta", mail="bert@contoso.test")
    handle.add_user("Carl Gamma", mail="carl@contoso.test")
    token = handle.app_token()
    filtered = handle.graph("GET", "users", token, params={"$filter": "mail eq 'ANNA@contoso.test'"})
    assert filtered.status_code == 200
    assert [u["id"] for u in filtered.json()["value"]] == [anna["id"]]
    assert set(filtered.json()["value"][0]) >= {"id", "mail", "userPrincipalName", "displayName"}
    first = handle.graph("GET", "users", token, params={"$top": "2", "$select": "id,mail"}).json()
    assert len(first["value"]) == 2
    assert set(first["value"][0]) == {"id", "mail"}
    rest = handle.http().get(first["@odata.nextLink"], headers={"Authorization": f"Bearer {token}"}).json()
    assert len(rest["value"]) == 1
    assert "@odata.nextLink" not in rest
    by_id = handle.graph("GET", f"users/{anna['id']}", token).json()
    by_upn = handle.graph("GET", f"users/{anna['userPrincipalName']}", token).json()
    assert by_id["id"] == by_upn["id"] == anna["id"]
    missing = handle.graph("GET", f"users/{uuid.uuid4()}", token)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "Request_ResourceNotFound"
    bad = handle.graph("GET", "users", token, params={"$filter": "startswith(mail,'a')"})
    assert bad.status_code == 400


def test_presence_permissions(graph_sandbox: SandboxFactory) -> None:
    handle = graph_sandbox()
    user = handle.add_user("Anna Alpha")
    handle.add_service_account("svc@sandbox.onmicrosoft.com", PASSWORD)
    reader = handle.control(
        "POST", "/apps", {"clientSecret": "reader-secret", "applicationPermissions": ["Presence.Read.All"]}
    )
    read_token = handle.app_token(reader["clientId"], "reader-secret")
    assert handle.graph("GET", f"users/{user['id']}/presence", read_token).status_code == 200
    denied = _set(handle, read_token, user["id"], "Busy", "InACall", session_id=reader["clientId"])
    assert denied.status_code == 403
    assert denied.json()["error"]["code"] == "Forbidden"
    assert "Presence.ReadWrite.All" in denied.json()["error"]["message"]
    delegated = handle.user_token("svc@sandbox.onmicrosoft.com", PASSWORD)
    assert handle.graph("GET", f"communications/presences/{user['id']}", delegated).status_code == 200
    assert _set(handle, delegated, user["id"], "Busy", "InACall").status_code == 403
    writer = handle.control("POST", "/apps", {"delegatedPermissions": ["Presence.ReadWrite"]})
    write_token = handle.user_token(
        "svc@sandbox.onmicrosoft.com", PASSWORD, ["Presence.ReadWrite"], writer["clientId"]
    )
    assert (
        _set(handle, write_token, user["id"], "Busy", "InACall", session_id=writer["clientId"]).status_code
        == 200
    )
    assert handle.graph("GET", f"users/{user['id']}/presence", write_token).status_code == 403
    nothing = handle.control("POST", "/apps", {"clientSecret": "none-secret", "applicationPermissions": []})
    no_roles = handle.app_token(nothing["clientId"], "none-secret")
    assert handle.graph("GET", f"users/{user['id']}/presence", no_roles).status_code == 403


SET_PRESENCE_CASES = [
    ("Available", "Available", 200),
    ("Busy", "InACall", 200),
    ("Busy", "InAConferenceCall", 200),
    ("Away", "Away", 200),
    ("DoNotDisturb", "Presenting", 200),
    ("Busy", "Busy", 400),
    ("Busy", "InAMeeting", 400),
    ("DoNotDisturb", "DoNotDisturb", 400),
    ("Available", "OutOfOffice", 400),
    ("Offline", "Offline", 400),
]


def test_set_presence_combinations(graph_sandbox: SandboxFactory) -> None:
    handle = graph_sandbox()
    token = handle.app_token()
    for availability, activity, status in SET_PRESENCE_CASES:
        user = handle.add_user(f"User {availability} {activity}")
        response = _set(handle, token, user["id"], availability, activity)
        assert response.status_code == status, (availability, activity, response.text)
        if status == 400:
            error = response.json()["error"]
            assert error["code"] == "BadRequest"
            assert set(error["innerError"]) >= {"date", "request-id"}
            assert _state(_presence(handle, token, user["id"])) == ("Offline", "Offline")
        else:
            assert _state(_presence(handle, token, user["id"])) == (availability, activity)


def test_set_presence_expiration_duration(graph_sandbox: SandboxFactory) -> None:
    handle = graph_sandbox()
    user = handle.add_user("Anna Alpha")
    token = handle.app_token()
    cases = [
        ("PT4M59S", 400),
        ("PT5M", 200),
        ("PT4H", 200),
        ("PT4H1M", 400),
        ("P1D", 400),
        ("soon", 400),
        (None, 200),
    ]
    for duration, status in cases:
        response = _set(handle, token, user["id"], "Busy", "InACall", duration)
        assert response.status_code == status, (duration, response.text)
    sessions = handle.control("GET", f"/users/{user['id']}/sessions")["sessions"]
    assert [s["kind"] for s in sessions] == ["application"]


def test_set_presence_session_id_must_be_the_app(graph_sandbox: SandboxFactory) -> None:
    handle = graph_sandbox()
    user = handle.add_user("Anna Alpha")
    response = _set(handle, handle.app_token(), user["id"], "Busy", "InACall", session_id=str(uuid.uuid4()))
    assert response.status_code == 400


def test_aggregation_rules(graph_sandbox: SandboxFactory) -> None:
    handle = graph_sandbox()
    user = handle.add_user("Anna Alpha")["id"]
    token = handle.app_token()
    handle.set_teams_presence(user, "Available", "Available", session="desktop")
    assert _state(_presence(handle, token, user)) == ("Available", "Available")
    assert _set(handle, token, user, "Busy", "InACall").status_code == 200
    assert _state(_presence(handle, token, user)) == ("Busy", "InACall")  # Busy > Available
    handle.set_teams_presence(user, "DoNotDisturb", "Presenting", session="mobile")
    assert _state(_presence(handle, token, user)) == ("DoNotDisturb", "Presenting")  # DND > Busy
    handle.set_teams_presence(user, "Away", "Away", session="mobile")
    assert _state(_presence(handle, token, user)) == ("Busy", "InACall")  # Busy > Away
    preferred = handle.graph(
        "POST",
        f"users/{user}/presence/setUserPreferredPresence",
        token,
        {"availability": "Away", "activity": "Away", "expirationDuration": "PT8H"},
    )
    assert preferred.status_code == 200
    assert _state(_presence(handle, token, user)) == ("Away", "Away")  # preferred > sessions
    bad = handle.graph(
        "POST",
        f"users/{user}/presence/setUserPreferredPresence",
        token,
        {"availability": "Busy", "activity": "InACall"},
    )
    assert bad.status_code == 400
    assert (
        handle.graph("POST", f"users/{user}/presence/clearUserPreferredPresence", token, {}).status_code
        == 200
    )
    assert _state(_presence(handle, token, user)) == ("Busy", "InACall")


def test_preferred_presence_needs_a_session(graph_sandbox: SandboxFactory) -> None:
    handle = graph_sandbox()
    user = handle.add_user("Anna Alpha")["id"]
    token = handle.app_token()
    handle.graph(
        "POST",
        f"users/{user}/presence/setUserPreferredPresence",
        token,
        {"availability": "DoNotDisturb", "activity": "DoNotDisturb"},
    )
    assert _state(_presence(handle, token, user)) == ("Offline", "Offline")
    handle.set_teams_presence(user, "Available", "Available")
    assert _state(_presence(handle, token, user)) == ("DoNotDisturb", "DoNotDisturb")


def test_clear_presence(graph_sandbox: SandboxFactory) -> None:
    handle = graph_sandbox()
    user = handle.add_user("Anna Alpha")["id"]
    token = handle.app_token()
    missing = handle.graph(
        "POST", f"users/{user}/presence/clearPresence", token, {"sessionId": handle.client_id}
    )
    assert missing.status_code == 404
    assert _set(handle, token, user, "Busy", "InACall").status_code == 200
    cleared = handle.graph(
        "POST", f"users/{user}/presence/clearPresence", token, {"sessionId": handle.client_id}
    )
    assert cleared.status_code == 200
    assert _state(_presence(handle, token, user)) == ("Offline", "Offline")


def test_available_session_goes_idle_then_away(graph_sandbox: SandboxFactory) -> None:
    handle = graph_sandbox()
    user = handle.add_user("Anna Alpha")["id"]
    token = handle.app_token()
    assert _set(handle, token, user, "Available", "Available", "PT4H").status_code == 200
    handle.advance(4 * 60 + 50)
    assert _state(_presence(handle, token, user)) == ("Available", "Available")
    handle.advance(15)
    assert _state(_presence(handle, token, user)) == ("AvailableIdle", "Inactive")
    handle.advance(5 * 60)
    assert _state(_presence(handle, token, user)) == ("Away", "Away")
    # One advance across both deadlines still records both transitions, in order.
    other = handle.add_user("Bert Beta")["id"]
    assert _set(handle, token, other, "Available", "Available", "PT4H").status_code == 200
    handle.advance(11 * 60)
    states = [(h["availability"], h["activity"]) for h in handle.history(other)]
    assert states[-3:] == [("Available", "Available"), ("AvailableIdle", "Inactive"), ("Away", "Away")]
    # Calling setPresence again is the keep-alive that holds Available.
    assert _set(handle, token, other, "Available", "Available", "PT4H").status_code == 200
    assert _state(_presence(handle, token, other)) == ("Available", "Available")


def test_expired_session_disappears(graph_sandbox: SandboxFactory) -> None:
    handle = graph_sandbox()
    user = handle.add_user("Anna Alpha")["id"]
    token = handle.app_token()
    handle.set_teams_presence(user, "Away", "Away")
    assert _set(handle, token, user, "Busy", "InACall", "PT5M").status_code == 200
    handle.advance(4 * 60)
    assert _state(_presence(handle, token, user)) == ("Busy", "InACall")
    handle.advance(61)
    assert _state(_presence(handle, token, user)) == ("Away", "Away")
    handle.control("DELETE", f"/users/{user}/sessions/desktop")
    assert _state(_presence(handle, token, user)) == ("Offline", "Offline")


def test_presence_resource_reads_agree(graph_sandbox: SandboxFactory) -> None:
    handle = graph_sandbox()
    anna = handle.add_user("Anna Alpha")["id"]
    bert = handle.add_user("Bert Beta")["id"]
    token = handle.app_token()
    handle.set_teams_presence(anna, "Busy", "InAMeeting")
    by_user = _presence(handle, token, anna)
    by_comm = handle.graph("GET", f"communications/presences/{anna}", token).json()
    assert by_user["id"] == by_comm["id"] == anna
    assert _state(by_user) == _state(by_comm) == ("Busy", "InAMeeting")
    assert by_user["sequenceNumber"] == by_comm["sequenceNumber"]
    assert set(by_user) >= {
        "id",
        "availability",
        "activity",
        "sequenceNumber",
        "statusMessage",
        "outOfOfficeSettings",
    }
    ids = [anna, bert] + [str(uuid.uuid4()) for _ in range(648)]
    bulk = handle.graph("POST", "communications/getPresencesByUserId", token, {"ids": ids})
    assert bulk.status_code == 200
    assert {p["id"]: _state(p) for p in bulk.json()["value"]} == {
        anna: ("Busy", "InAMeeting"),
        bert: ("Offline", "Offline"),
    }
    too_many = handle.graph(
        "POST", "communications/getPresencesByUserId", token, {"ids": [*ids, str(uuid.uuid4())]}
    )
    assert too_many.status_code == 400
    assert too_many.json()["error"]["code"] == "BadRequest"


def test_sequence_number_increases_with_every_change(graph_sandbox: SandboxFactory) -> None:
    handle = graph_sandbox()
    user = handle.add_user("Anna Alpha")["id"]
    token = handle.app_token()
    seen = [_presence(handle, token, user)["sequenceNumber"]]
    for availability, activity in [("Busy", "InACall"), ("Away", "Away"), ("Available", "Available")]:
        assert _set(handle, token, user, availability, activity).status_code == 200
        seen.append(_presence(handle, token, user)["sequenceNumber"])
    status = handle.graph(
        "POST",
        f"users/{user}/presence/setStatusMessage",
        token,
        {"statusMessage": {"message": {"content": "Im Gespräch", "contentType": "text"}}},
    )
    assert status.status_code == 200
    after_status = _presence(handle, token, user)
    assert after_status["statusMessage"]["message"]["content"] == "Im Gespräch"
    seen.append(after_status["sequenceNumber"])
    assert seen == sorted(seen)
    assert len(set(seen)) == len(seen)
    assert all(isinstance(s, str) and s.isdigit() and len(s) == len(seen[0]) for s in seen)
    # A keep-alive that changes nothing is not a change.
    assert _set(handle, token, user, "Available", "Available").status_code == 200
    assert _presence(handle, token, user)["sequenceNumber"] == seen[-1]


def test_out_of_office_keeps_call_activity(graph_sandbox: SandboxFactory) -> None:
    handle = graph_sandbox()
    user = handle.add_user("Anna Alpha")["id"]
    token = handle.app_token()
    handle.set_teams_presence(user, "Available", "Available")
    handle.control("PATCH", f"/users/{user}", {"outOfOffice": True, "outOfOfficeMessage": "Urlaub"})
    presence = _presence(handle, token, user)
    assert _state(presence) == ("Available", "OutOfOffice")
    assert presence["outOfOfficeSettings"] == {"message": "Urlaub", "isOutOfOffice": True}
    assert _set(handle, token, user, "Busy", "InACall").status_code == 200
    assert _state(_presence(handle, token, user)) == ("Busy", "InACall")
