"""Injected faults for the Entra routes of the Graph sandbox, as ASGI middleware at its edge."""

from __future__ import annotations

import asyncio
import uuid

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from service.sandbox.entra import OAuthError
from service.sandbox.graph_host import GraphHost


class EdgeMiddleware:
    def __init__(self, app: ASGIApp, sandbox: GraphHost) -> None:
        self.app = app
        self.sandbox = sandbox

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if not path.startswith(("/v1.0/", "/_sandbox/")):
            fault = self.sandbox.faults.take(scope["method"], path)
            if fault is not None:
                if fault.stall_seconds:
                    await asyncio.sleep(fault.stall_seconds)
                if fault.status is not None:
                    error = OAuthError(fault.status, "temporarily_unavailable", 90033, "Injected failure.")
                    response = JSONResponse(
                        error.body(self.sandbox.clock.utcnow(), str(uuid.uuid4()), self.sandbox.base_url),
                        status_code=fault.status,
                        headers={"Retry-After": str(fault.retry_after)}
                        if fault.retry_after is not None
                        else None,
                    )
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)
