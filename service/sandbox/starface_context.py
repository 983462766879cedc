"""What every STARFACE sandbox endpoint shares: the PBX, the callback dispatcher, the faults."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.responses import JSONResponse

from service.sandbox.starface_callbacks import Dispatcher
from service.sandbox.starface_model import Pbx
from service.sandbox.starface_wire import Wire


@dataclass
class Faults:
    down: str = "none"
    slow_seconds: float = 0.0
    errors: int = 0
    # Request paths (prefixes) answered 500 until cleared, e.g. ["/rest/groups"].
    fail_paths: tuple[str, ...] = ()
    # How a UCI call with a wrong password is refused: "401" or an XML-RPC "fault" (not documented).
    refused_login: str = "401"

    def view(self) -> dict[str, Any]:
        return {
            "down": self.down,
            "slowSeconds": self.slow_seconds,
            "errors": self.errors,
            "failPaths": list(self.fail_paths),
            "refusedLogin": self.refused_login,
        }


@dataclass
class Context:
    pbx: Pbx
    dispatcher: Dispatcher
    control_token: str = field(repr=False)
    faults: Faults = field(default_factory=Faults)
    # How UCI answers and callbacks spell their values (service.sandbox.starface_wire).
    wire: Wire = field(default_factory=Wire)
    # login -> the running "UCC client" that overwrites the user's status text (control API).
    ucc_clients: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    # Set by the server: closes or reopens the PBX listener for the "refuse" fault.
    set_listening: Callable[[bool], Awaitable[None]] | None = None
    info: dict[str, Any] = field(default_factory=dict)


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)
