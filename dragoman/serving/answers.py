"""Whole answers (JSON) and the head of streamed ones, with their headers built directly."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from dragoman.core.dialect import WireError
from dragoman.errors import ErrorKind, GatewayError
from dragoman.serving.disconnect import DisconnectWatch

log = logging.getLogger("dragoman")

Endpoint = Callable[[Request], Awaitable[Response]]
RawHeaders = list[tuple[bytes, bytes]]


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


def wire_error_response(error: GatewayError, wire: WireError, headers: Mapping[str, str] | None = None) -> Response:
    """A dialect's rendering of ``error`` (:meth:`Dialect.render_error`) as the response."""
    extra = error_headers(error, headers)
    extra.update(wire.headers)
    return json_response(wire.body, status=wire.status, headers=extra)


def internal_error(method: str, path: str, exc: BaseException) -> Response:
    """A bug: logged with its traceback, answered as a JSON 500 (no details leak to the client)."""
    log.error("unhandled error on %s %s", method, path, exc_info=exc)
    body = {"error": {"message": "internal error in dragoman; see the server log", "type": "server_error",
                      "param": None, "code": None}}
    return json_response(body, status=500)


def stream_head(media_type: str, headers: Mapping[str, str] | None = None) -> RawHeaders:
    """The raw headers of a streamed answer: ``headers``, its content type, and no caching or
    proxy buffering (what Starlette's ``StreamingResponse`` would send, built directly)."""
    raw = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in (headers or {}).items()]
    names = {name for name, _ in raw}
    if b"content-type" not in names:
        if media_type.startswith("text/") and "charset=" not in media_type.lower():
            media_type += "; charset=utf-8"
        raw.append((b"content-type", media_type.encode("latin-1")))
    if b"cache-control" not in names:
        raw.append((b"cache-control", b"no-cache"))
    if b"x-accel-buffering" not in names:
        raw.append((b"x-accel-buffering", b"no"))
    return raw


class FrameStreamResponse(Response):
    """Writes each frame from ``frames`` as one chunk, and stops it when the client leaves (for
    streams that are not generations: a model pull's progress)."""

    def __init__(self, frames: AsyncIterator[bytes], *, media_type: str,
                 headers: Mapping[str, str] | None = None) -> None:
        self.status_code = 200
        self.background = None
        self.frames = frames
        self.raw_headers = stream_head(media_type, headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watch = DisconnectWatch(receive)
        try:
            with watch:
                await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
                async for frame in self.frames:
                    await send({"type": "http.response.body", "body": frame, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not watch.client_left():
                raise
        except OSError:
            pass  # the connection broke under a write: the client is gone
        finally:
            aclose = getattr(self.frames, "aclose", None)
            if aclose is not None:
                await aclose()
