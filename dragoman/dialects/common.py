"""HTTP plumbing every dialect shares: bodies, credentials, JSON and streamed responses.

The streamed response watches for the client going away while it produces, and cancels the
producer (which closes the upstream request) the moment it does, even when the upstream is
silent and nothing is being written.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

import orjson
from pydantic import ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from dragoman.core.ids import random_id
from dragoman.core.service import CallContext
from dragoman.errors import ErrorKind, GatewayError

T = TypeVar("T")


def json_response(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, headers=dict(headers or {}),
                    media_type="application/json")


_KEY_HEADERS = (b"authorization", b"x-api-key", b"api-key")


def credentials(headers: Mapping[str, str]) -> str | None:
    """The key a client presented: ``Authorization: Bearer``, ``x-api-key`` or ``api-key``.

    An empty bearer (Enchanted sends ``Bearer `` when no key is set) counts as none.
    """
    authorization = headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    for name in ("x-api-key", "api-key"):
        value = headers.get(name, "").strip()
        if value:
            return value
    return None


def scope_credentials(raw_headers: list[tuple[bytes, bytes]]) -> str | None:
    """:func:`credentials` in one pass over the raw ASGI headers (this runs on every request)."""
    found = {name: value for name, value in raw_headers if name in _KEY_HEADERS}
    if not found:
        return None
    return credentials({k.decode("latin-1"): v.decode("latin-1") for k, v in found.items()})


def call_context(request: Request, dialect: str) -> CallContext:
    return CallContext(
        dialect=dialect,
        api_key=scope_credentials(request.scope["headers"]),
        client_host=request.client.host if request.client else None,
        request_id=request.headers.get("x-request-id") or random_id("req_", 20),
        started_at=time.perf_counter(),
        headers=request.headers,
    )


async def read_json(request: Request) -> Any:
    """The body as JSON, within the configured size limit."""
    limit: int = request.app.state.max_body_bytes if hasattr(request.app.state, "max_body_bytes") else 32 << 20
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise GatewayError(ErrorKind.PAYLOAD_TOO_LARGE, f"request body is larger than {limit} bytes")
    chunks = bytearray()
    try:
        async for chunk in request.stream():
            chunks += chunk
            if len(chunks) > limit:
                raise GatewayError(ErrorKind.PAYLOAD_TOO_LARGE, f"request body is larger than {limit} bytes")
    except ClientDisconnect as exc:
        raise GatewayError(ErrorKind.CANCELLED, "client disconnected") from exc
    if not chunks:
        raise GatewayError(ErrorKind.INVALID_REQUEST, "request body is empty; expected a JSON object")
    try:
        return orjson.loads(chunks)
    except orjson.JSONDecodeError as exc:
        raise GatewayError(ErrorKind.INVALID_REQUEST, f"request body is not valid JSON: {exc}") from exc


def validation_error(exc: ValidationError) -> GatewayError:
    """A pydantic failure as one precise 400 naming the first bad field."""
    first = exc.errors()[0]
    location = ""
    for part in first["loc"]:
        if isinstance(part, int):
            location += f"[{part}]"
        elif not str(part).startswith(("function-", "tagged-union")):
            location += f".{part}" if location else str(part)
    message = first["msg"]
    if first["type"] == "missing":
        message = "field required"
    text = f"{location}: {message}" if location else message
    extra = len(exc.errors()) - 1
    if extra:
        text += f" (and {extra} more error{'s' if extra > 1 else ''})"
    return GatewayError(ErrorKind.INVALID_REQUEST, text, param=location or None)


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await ``work`` in this task; if the client disconnects first, cancel it.

    One watcher task per call (the work itself is not wrapped in a task): this sits on every
    non-streaming request.
    """
    task = asyncio.current_task()
    assert task is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        await _wait_disconnect(request.receive)
        gone = True
        task.cancel()

    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if not gone:
            raise
        task.uncancel()
        raise GatewayError(ErrorKind.CANCELLED, "client disconnected") from None
    finally:
        watcher.cancel()


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class FrameStreamResponse(Response):
    """Writes each frame from ``frames`` as one chunk, and stops it when the client leaves."""

    def __init__(self, frames: AsyncIterator[bytes], *, media_type: str, headers: Mapping[str, str] | None = None,
                 on_close: Callable[[], Awaitable[None]] | None = None) -> None:
        # Like StreamingResponse: no body attribute, so no Content-Length header.
        self.status_code = 200
        self.media_type = media_type
        self.background = None
        self.init_headers(dict(headers or {}))
        self.frames = frames
        self.on_close = on_close
        self.headers.setdefault("cache-control", "no-cache")
        self.headers.setdefault("x-accel-buffering", "no")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        producer = asyncio.ensure_future(self._produce(send))
        watcher = asyncio.ensure_future(_wait_disconnect(receive))
        try:
            await asyncio.wait({producer, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            if not producer.done():
                producer.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await producer
            if self.on_close is not None:
                await self.on_close()

    async def _produce(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        try:
            async for frame in self.frames:
                await send({"type": "http.response.body", "body": frame, "more_body": True})
        finally:
            aclose = getattr(self.frames, "aclose", None)
            if aclose is not None:
                await aclose()
        await send({"type": "http.response.body", "body": b"", "more_body": False})
