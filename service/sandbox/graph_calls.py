"""One Graph API request as the sandbox handles it (also inside $batch), its result and its checks."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from service.sandbox.entra import (
    AccessContext,
)
from service.sandbox.graphstate import GraphError, bad_request

# ---- Graph request plumbing ------------------------------------------------------------------


@dataclass
class GraphCall:
    method: str
    path: str  # relative to /v1.0, decoded, no leading slash
    query: dict[str, str]
    headers: Mapping[str, str]  # lower-case names
    body: bytes


@dataclass
class GraphResult:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[GraphCall, AccessContext, re.Match[str]], Awaitable[GraphResult]]


@dataclass(frozen=True)
class GraphRoute:
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    presence: bool  # counts against the presence rate limit


def json_body(call: GraphCall) -> dict[str, Any]:
    if not call.body.strip():
        return {}
    try:
        value = json.loads(call.body)
    except (ValueError, UnicodeDecodeError):
        raise bad_request(
            "Unable to read JSON request payload. Please ensure Content-Type header is set and payload "
            "is of valid JSON format."
        ) from None
    if not isinstance(value, dict):
        raise bad_request("The request payload must be a JSON object.")
    return value


def forbidden(ctx: AccessContext, app_perms: set[str], delegated_perms: set[str]) -> GraphError:
    if ctx.app_only:
        return GraphError(
            403,
            "Forbidden",
            f"Missing role permissions on the request. API requires one of "
            f"'{', '.join(sorted(app_perms))}'. Roles on the request '{', '.join(sorted(ctx.roles))}'.",
        )
    return GraphError(
        403,
        "Forbidden",
        f"Missing scope permissions on the request. API requires one of "
        f"'{', '.join(sorted(delegated_perms))}'. Scopes on the request '{' '.join(sorted(ctx.scopes))}'.",
    )


def require(ctx: AccessContext, app_perms: set[str], delegated_perms: set[str]) -> None:
    granted = ctx.roles if ctx.app_only else ctx.scopes
    wanted = app_perms if ctx.app_only else delegated_perms
    if not granted & wanted:
        raise forbidden(ctx, app_perms, delegated_perms)
