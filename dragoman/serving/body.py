"""The request body as JSON, within a size limit and a stall limit."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from starlette.requests import Request
from starlette.types import Receive, Scope

from dragoman.errors import ErrorKind, GatewayError

DEFAULT_BODY_LIMIT = 32 << 20
DEFAULT_BODY_TIMEOUT = 30.0


async def read_json(request: Request) -> Any:
    """:func:`receive_json` with the limits the app was configured with (``app.state``)."""
    state = request.app.state
    limit: int = state.max_body_bytes if hasattr(state, "max_body_bytes") else DEFAULT_BODY_LIMIT
    timeout: float = state.body_timeout if hasattr(state, "body_timeout") else DEFAULT_BODY_TIMEOUT
    return await receive_json(request.scope, request.receive, limit=limit, stall_after=timeout)


async def receive_json(scope: Scope, receive: Receive, *, limit: int, stall_after: float) -> Any:
    """The body as JSON, within ``limit`` bytes; a body that stops arriving for ``stall_after``
    seconds (no bytes in that long) is a 408."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            if value.isdigit() and int(value) > limit:
                raise GatewayError(ErrorKind.PAYLOAD_TOO_LARGE, f"request body is larger than {limit} bytes")
            break
    chunks = await _read_body(receive, limit, stall_after=stall_after)
    if not chunks:
        raise GatewayError(ErrorKind.INVALID_REQUEST, "request body is empty; expected a JSON object")
    try:
        return orjson.loads(chunks)
    except orjson.JSONDecodeError as exc:
        raise GatewayError(ErrorKind.INVALID_REQUEST, f"request body is not valid JSON: {exc}") from exc


async def _read_body(receive: Receive, limit: int, *, stall_after: float) -> bytearray:
    """The body, from the ASGI messages directly (Starlette's ``request.stream()`` generator cost
    more). One timer, set again whenever bytes arrive, cancels this task once the body has stalled
    for ``stall_after`` seconds: ``asyncio.timeout`` around each ``receive()`` measured several
    times costlier than a bare timer, and this runs on every request."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    cancelling = task.cancelling()
    stalled = False

    def stall() -> None:
        nonlocal stalled
        stalled = True
        task.cancel()

    chunks = bytearray()
    timer = loop.call_later(stall_after, stall)
    try:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise GatewayError(ErrorKind.CANCELLED, "client disconnected")
            chunks += message.get("body", b"")
            if len(chunks) > limit:
                raise GatewayError(ErrorKind.PAYLOAD_TOO_LARGE, f"request body is larger than {limit} bytes")
            if not message.get("more_body", False):
                return chunks
            timer.cancel()
            timer = loop.call_later(stall_after, stall)
    except asyncio.CancelledError:
        if stalled and task.uncancel() <= cancelling:  # our cancellation, not anyone else's
            raise GatewayError(ErrorKind.REQUEST_TIMEOUT, f"the request body stopped arriving: no data for "
                               f"{stall_after:g} s after {len(chunks)} bytes") from None
        raise
    finally:
        timer.cancel()
