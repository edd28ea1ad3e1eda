"""HTTP plumbing every dialect shares: bodies, credentials, JSON and streamed responses.

The streamed response watches for the client going away while it produces, and cancels the
producer (which closes the upstream request) the moment it does, even when the upstream is
silent and nothing is being written.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from dragoman.core.request_ids import SCOPE_CONTEXT, SCOPE_REQUEST_ID, request_id
from dragoman.core.service import CallContext
from dragoman.errors import ErrorKind, GatewayError

T = TypeVar("T")


class JSONBodyResponse(Response):
    """``data`` as orjson bytes, its raw headers built directly (Starlette's ``init_headers``
    showed in profiles of the generation endpoints). Headers stay mutable, cookies settable."""

    media_type = "application/json"

    def __init__(self, data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> None:
        self.status_code = status
        self.background = None
        self.body = orjson.dumps(data)
        raw = [(b"content-length", str(len(self.body)).encode()), (b"content-type", b"application/json")]
        if headers:
            raw += [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]
        self.raw_headers = raw


def json_response(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return JSONBodyResponse(data, status, headers)


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
    """The call's context; its request id is the one the app's request log gave the request (the
    ``x-request-id`` response header), and the request log reads the context back afterwards."""
    scope = request.scope
    client = scope.get("client")
    raw_headers = scope["headers"]
    ctx = CallContext(
        dialect=dialect,
        api_key=scope_credentials(raw_headers),
        client_host=client[0] if client else None,
        request_id=scope.get(SCOPE_REQUEST_ID) or request_id(raw_headers),
        started_at=time.perf_counter(),
        headers=request.headers,
    )
    scope[SCOPE_CONTEXT] = ctx
    return ctx


DEFAULT_BODY_TIMEOUT = 30.0


def error_headers(error: GatewayError, headers: Mapping[str, str] | None = None) -> dict[str, str]:
    """The headers of an error response in any dialect: ``headers``, plus ``retry-after`` when the
    error knows it, and ``connection: close`` after a 408 (RFC 9110 15.5.9: the server gave up on
    the request, and the rest of its body is not worth waiting for)."""
    extra = dict(headers or {})
    if error.retry_after is not None:
        extra["retry-after"] = str(max(1, round(error.retry_after)))
    if error.kind is ErrorKind.REQUEST_TIMEOUT:
        extra["connection"] = "close"
    return extra


async def read_json(request: Request) -> Any:
    """The body as JSON, within the configured size limit; a body that stops arriving for the
    configured ``body_timeout`` (no bytes in that long) is a 408."""
    state = request.app.state
    limit: int = state.max_body_bytes if hasattr(state, "max_body_bytes") else 32 << 20
    timeout: float = state.body_timeout if hasattr(state, "body_timeout") else DEFAULT_BODY_TIMEOUT
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise GatewayError(ErrorKind.PAYLOAD_TOO_LARGE, f"request body is larger than {limit} bytes")
    chunks = await _read_body(request.receive, limit, stall_after=timeout)
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


# A request that ends sooner never starts a watcher task (most do: a watcher per request showed
# in profiles); a client that left earlier is noticed the moment the watcher starts.
WATCH_AFTER = 0.05


class DisconnectWatch:
    """Cancels the current task when the client disconnects (``with DisconnectWatch(receive)``).

    The watcher task starts ``WATCH_AFTER`` seconds in, so a slow upstream is cancelled at most
    that late, and a quick answer costs one timer. ``gone`` tells a cancellation caused by the
    client from any other (which must propagate).
    """

    __slots__ = ("_receive", "_task", "_timer", "_watcher", "gone")

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._task: asyncio.Task[Any] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._watcher: asyncio.Task[None] | None = None
        self.gone = False

    def __enter__(self) -> DisconnectWatch:
        self._task = asyncio.current_task()
        self._timer = asyncio.get_running_loop().call_later(WATCH_AFTER, self._start)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._watcher is not None:
            self._watcher.cancel()

    def _start(self) -> None:
        self._timer = None
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        await _wait_disconnect(self._receive)
        self.gone = True
        if self._task is not None:
            self._task.cancel()

    def client_left(self) -> bool:
        """Asked on ``CancelledError``: True when the client caused it, which is then handled (the
        task runs on, to answer or to clean up); False means re-raise it."""
        if not self.gone:
            return False
        assert self._task is not None
        self._task.uncancel()
        return True


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await ``work`` in this task; if the client disconnects first, cancel it (a ``GatewayError``)."""
    watch = DisconnectWatch(request.receive)
    with watch:
        try:
            return await work
        except asyncio.CancelledError:
            if not watch.client_left():
                raise
            raise GatewayError(ErrorKind.CANCELLED, "client disconnected") from None


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
        watch = DisconnectWatch(receive)
        try:
            with watch:
                await self._produce(send)
        except asyncio.CancelledError:
            if not watch.client_left():
                raise
        except OSError:
            pass  # the connection broke under a write: the client is gone
        finally:
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
