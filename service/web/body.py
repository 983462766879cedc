"""Request bodies read with a bound: a declared or streamed excess stops reading at once."""

from __future__ import annotations

from starlette.requests import Request


class BodyTooLarge(Exception):
    """A request body above the route's limit; answered with 413 before it is read in full."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"body exceeds {limit} bytes")


async def read_bounded(request: Request, limit: int) -> bytes:
    """The body, never more than ``limit`` bytes of it; raises ``BodyTooLarge`` beyond."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)
