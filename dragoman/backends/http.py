"""The pooled HTTP client every HTTP backend shares, and upstream failures mapped by table."""

from __future__ import annotations

import asyncio
import functools
import socket
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import orjson

from dragoman.backends.base import Timeouts
from dragoman.errors import ErrorKind, GatewayError

STATUS_KINDS: dict[int, ErrorKind] = {
    400: ErrorKind.INVALID_REQUEST,
    401: ErrorKind.AUTHENTICATION,
    403: ErrorKind.PERMISSION,
    404: ErrorKind.NOT_FOUND,
    408: ErrorKind.TIMEOUT,
    413: ErrorKind.PAYLOAD_TOO_LARGE,
    422: ErrorKind.INVALID_REQUEST,
    429: ErrorKind.RATE_LIMITED,
    500: ErrorKind.UPSTREAM_ERROR,
    502: ErrorKind.UPSTREAM_ERROR,
    503: ErrorKind.OVERLOADED,
    504: ErrorKind.TIMEOUT,
    529: ErrorKind.OVERLOADED,
}

# Upstream statuses that reach the client unchanged; other failures use their kind's status.
PASSTHROUGH_STATUSES = frozenset({400, 401, 403, 404, 413, 422, 429})


def make_session(*, limit: int = 256) -> aiohttp.ClientSession:
    """One keep-alive pool per backend. Timeouts are applied per call, not here."""
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit, ttl_dns_cache=300,
                                     family=socket.AF_UNSPEC, enable_cleanup_closed=True)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None),
        json_serialize=lambda obj: orjson.dumps(obj).decode(),
        cookie_jar=aiohttp.DummyCookieJar(),  # upstream APIs set no cookies worth keeping per request
        auto_decompress=True,
        raise_for_status=False,
    )


@functools.lru_cache(maxsize=64)
def client_timeout(timeouts: Timeouts) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=None, sock_connect=timeouts.connect, connect=timeouts.connect,
                                 sock_read=None)


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                continue
    return None


def status_error(backend: str, status: int, message: str, *, headers: Mapping[str, str] | None = None,
                 code: str | None = None, kind: ErrorKind | None = None, param: str | None = None
                 ) -> GatewayError:
    """An upstream error response as a ``GatewayError``, its status and message kept."""
    resolved = kind or STATUS_KINDS.get(status) or (
        ErrorKind.UPSTREAM_ERROR if status >= 500 else ErrorKind.INVALID_REQUEST)
    return GatewayError(
        resolved,
        message or f"upstream {backend!r} returned HTTP {status}",
        status=status if status in PASSTHROUGH_STATUSES else None,
        upstream_status=status,
        code=code,
        param=param,
        retry_after=retry_after_seconds(headers or {}),
    )


def exception_error(backend: str, exc: BaseException, timeouts: Timeouts) -> GatewayError:
    """Map a client-side exception by type (never by message)."""
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError,
                        ConnectionRefusedError, aiohttp.ClientOSError)):
        return GatewayError(ErrorKind.UPSTREAM_UNAVAILABLE, f"upstream {backend!r} is unreachable: {exc}")
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return GatewayError(ErrorKind.TIMEOUT, f"upstream {backend!r} timed out")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return GatewayError(ErrorKind.UPSTREAM_ERROR, f"upstream {backend!r} closed the connection mid-answer")
    if isinstance(exc, aiohttp.ClientError):
        return GatewayError(ErrorKind.UPSTREAM_ERROR, f"upstream {backend!r} failed: {exc}")
    raise exc


async def read_json(response: aiohttp.ClientResponse, backend: str) -> Any:
    body = await response.read()
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise GatewayError(ErrorKind.UPSTREAM_ERROR, f"upstream {backend!r} sent invalid JSON") from exc


async def iter_chunks(response: aiohttp.ClientResponse, idle: float, backend: str) -> AsyncIterator[bytes]:
    """The body's chunks as they arrive, each wait bounded by the idle timeout."""
    content = response.content
    while True:
        try:
            async with asyncio.timeout(idle):
                chunk = await content.readany()
        except TimeoutError as exc:
            raise GatewayError(ErrorKind.TIMEOUT,
                               f"upstream {backend!r} stalled for {idle:g}s mid-answer") from exc
        if not chunk:
            return
        yield chunk
