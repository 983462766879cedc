"""Graph's answer conventions the sandbox endpoints share: error names, response headers, $select and
the users $filter subset."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Any

from starlette.responses import JSONResponse, Response

from service.sandbox.entra import Account
from service.sandbox.graph_calls import GraphResult
from service.sandbox.graphstate import GraphError


def status_code_name(status: int) -> str:
    return {
        400: "BadRequest",
        401: "InvalidAuthenticationToken",
        403: "Forbidden",
        404: "NotFound",
        409: "Conflict",
        429: "TooManyRequests",
        500: "InternalServerError",
        502: "BadGateway",
        503: "ServiceUnavailable",
        504: "GatewayTimeout",
    }.get(status, "UnknownError")


def graph_response(result: GraphResult, client_request_id: str | None) -> Response:
    headers = dict(result.headers)
    headers["request-id"] = str(uuid.uuid4())
    if client_request_id:
        headers["client-request-id"] = client_request_id
    if result.body is None:
        return Response(status_code=result.status, headers=headers)
    return JSONResponse(result.body, status_code=result.status, headers=headers)


def select_fields(item: dict[str, Any], fields: list[str]) -> dict[str, Any]:
    if not fields:
        return item
    lowered = {f.lower() for f in fields} | {"id"}
    return {k: v for k, v in item.items() if k.lower() in lowered}


_FILTER_TERM = re.compile(
    r"^\s*(mail|userPrincipalName|id|displayName)\s+eq\s+'((?:[^']|'')*)'\s*$", re.IGNORECASE
)
# proxyAddresses is a collection: Graph filters it with a lambda, e.g. proxyAddresses/any(x:x eq 'smtp:a@b').
_ANY_TERM = re.compile(
    r"^\s*proxyAddresses/any\(\s*(\w+)\s*:\s*\1\s+eq\s+'((?:[^']|'')*)'\s*\)\s*$", re.IGNORECASE
)


def user_filter(expression: str) -> Callable[[Account], bool]:
    """``$filter`` on users: ``prop eq 'value'`` terms joined by ``or`` (what the bridge needs)."""
    terms: list[tuple[str, str]] = []
    for part in re.split(r"\s+or\s+", expression, flags=re.IGNORECASE):
        lambda_term = _ANY_TERM.match(part)
        if lambda_term is not None:
            terms.append(("proxyaddresses", lambda_term.group(2).replace("''", "'").lower()))
            continue
        match = _FILTER_TERM.match(part)
        if match is None:
            raise GraphError(
                400, "Request_UnsupportedQuery", "Unsupported or invalid query filter clause specified."
            )
        terms.append((match.group(1).lower(), match.group(2).replace("''", "'").lower()))

    # Parsed once per request, matched by set lookups: with 10,000 accounts a request must
    # not parse the expression (or build a dict) per account.
    wanted: dict[str, set[str]] = {}
    for name, value in terms:
        wanted.setdefault(name, set()).add(value)
    mails, names, ids = (
        wanted.get("mail", set()),
        wanted.get("userprincipalname", set()),
        wanted.get("id", set()),
    )
    displays, proxies = wanted.get("displayname", set()), wanted.get("proxyaddresses", set())

    def accept(account: Account) -> bool:
        return (
            (bool(mails) and (account.mail or "").lower() in mails)
            or (bool(names) and account.user_principal_name.lower() in names)
            or (bool(ids) and account.id.lower() in ids)
            or (bool(displays) and account.display_name.lower() in displays)
            or (bool(proxies) and any(p.lower() in proxies for p in account.proxy_addresses))
        )

    return accept
