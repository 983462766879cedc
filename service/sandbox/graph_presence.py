"""The Graph sandbox's presence endpoints: read, getPresencesByUserId, set and clear (also preferred)."""

from __future__ import annotations

import re
from typing import Any

from service.sandbox.entra import (
    AccessContext,
)
from service.sandbox.graph_calls import (
    GraphCall,
    GraphResult,
    json_body,
    require,
)
from service.sandbox.graph_control import session_duration
from service.sandbox.graph_host import GraphHost
from service.sandbox.graphstate import GraphError, bad_request, format_datetime, normalize_ids, parse_duration
from service.sandbox.presence_book import PREFERRED_COMBINATIONS, SESSION_DEFAULT, SET_PRESENCE_COMBINATIONS
from service.sandbox.subscription_book import PRESENCE_MAX_IDS


class PresenceEndpoints:
    """The presence handlers of the sandbox's Graph routes, on the sandbox's state."""

    def __init__(self, sandbox: GraphHost) -> None:
        self.sandbox = sandbox

    def require_presence_read(self, ctx: AccessContext, user_id: str | None) -> None:
        delegated = {"Presence.Read.All"}
        if user_id is not None and user_id == ctx.user_id:
            delegated.add("Presence.Read")
        require(ctx, {"Presence.Read.All", "Presence.ReadWrite.All"}, delegated)

    async def get_presence(self, call: GraphCall, ctx: AccessContext, match: re.Match[str]) -> GraphResult:
        account = self.sandbox._account(ctx, match)
        self.require_presence_read(ctx, account.id)
        body = {
            "@odata.context": f"https://graph.microsoft.com/v1.0/$metadata#users('{account.id}')/presence/$entity"
        }
        body.update(self.sandbox.presence.resource(account.id))
        return GraphResult(200, body)

    async def get_presences_by_id(
        self, call: GraphCall, ctx: AccessContext, _m: re.Match[str]
    ) -> GraphResult:
        self.require_presence_read(ctx, None)
        ids = json_body(call).get("ids")
        if not isinstance(ids, list) or not ids:
            raise bad_request("The request body must contain a non-empty 'ids' array.")
        if len(ids) > PRESENCE_MAX_IDS:
            raise bad_request(
                f"The number of ids cannot exceed {PRESENCE_MAX_IDS}; the request has {len(ids)}."
            )
        values = [
            self.sandbox.presence.resource(user_id)
            for user_id in dict.fromkeys(normalize_ids(ids))
            if user_id in self.sandbox.entra.accounts
        ]
        return GraphResult(
            200,
            {
                "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#Collection(presence)",
                "value": values,
            },
        )

    # presence writes

    def require_presence_write(self, ctx: AccessContext) -> None:
        require(ctx, {"Presence.ReadWrite.All"}, {"Presence.ReadWrite"})

    async def set_presence(self, call: GraphCall, ctx: AccessContext, match: re.Match[str]) -> GraphResult:
        account = self.sandbox._account(ctx, match)
        self.require_presence_write(ctx)
        body = json_body(call)
        session_id = body.get("sessionId")
        if not isinstance(session_id, str) or not session_id:
            raise bad_request("sessionId is required.")
        if session_id.lower() != ctx.app_id.lower():
            raise bad_request("The sessionId must be the id of the calling application.")
        pair = (body.get("availability"), body.get("activity"))
        if pair not in SET_PRESENCE_COMBINATIONS:
            raise bad_request(f"The availability/activity combination {pair[0]}/{pair[1]} is not supported.")
        duration = session_duration(body.get("expirationDuration"), SESSION_DEFAULT)
        self.sandbox.presence.set_session(
            account.id,
            ctx.app_id,
            kind="application",
            availability=str(pair[0]),
            activity=str(pair[1]),
            duration=duration,
            cause=f"setPresence by {ctx.app_id}",
        )
        return GraphResult(200)

    async def clear_presence(self, call: GraphCall, ctx: AccessContext, match: re.Match[str]) -> GraphResult:
        account = self.sandbox._account(ctx, match)
        self.require_presence_write(ctx)
        session_id = json_body(call).get("sessionId")
        if not isinstance(session_id, str) or not session_id:
            raise bad_request("sessionId is required.")
        if not self.sandbox.presence.clear_session(account.id, session_id, f"clearPresence by {ctx.app_id}"):
            raise GraphError(404, "NotFound", f"Presence session '{session_id}' was not found.")
        return GraphResult(200)

    async def set_preferred(self, call: GraphCall, ctx: AccessContext, match: re.Match[str]) -> GraphResult:
        account = self.sandbox._account(ctx, match)
        self.require_presence_write(ctx)
        body = json_body(call)
        pair = (body.get("availability"), body.get("activity"))
        if pair not in PREFERRED_COMBINATIONS:
            raise bad_request(f"The availability/activity combination {pair[0]}/{pair[1]} is not supported.")
        default = 86400.0 if pair[0] in ("DoNotDisturb", "Busy") else 7 * 86400.0
        raw = body.get("expirationDuration")
        duration = default if raw is None else parse_duration(str(raw))
        if duration <= 0:
            raise bad_request("expirationDuration must be positive.")
        self.sandbox.presence.set_preferred(account.id, str(pair[0]), str(pair[1]), duration)
        return GraphResult(200)

    async def clear_preferred(self, call: GraphCall, ctx: AccessContext, match: re.Match[str]) -> GraphResult:
        account = self.sandbox._account(ctx, match)
        self.require_presence_write(ctx)
        self.sandbox.presence.clear_preferred(account.id)
        return GraphResult(200)

    async def set_status_message(
        self, call: GraphCall, ctx: AccessContext, match: re.Match[str]
    ) -> GraphResult:
        account = self.sandbox._account(ctx, match)
        self.require_presence_write(ctx)
        status = json_body(call).get("statusMessage")
        if not isinstance(status, dict) or not isinstance(status.get("message"), dict):
            raise bad_request("statusMessage.message is required.")
        content = status["message"].get("content")
        if not isinstance(content, str):
            raise bad_request("statusMessage.message.content must be a string.")
        message: dict[str, Any] = {
            "message": {"content": content, "contentType": status["message"].get("contentType", "text")},
            "expiryDateTime": status.get("expiryDateTime"),
            "publishedDateTime": format_datetime(self.sandbox.clock.now()),
        }
        self.sandbox.presence.set_status_message(
            account.id, message if content else None, f"setStatusMessage by {ctx.app_id}"
        )
        return GraphResult(200)

    # subscriptions
