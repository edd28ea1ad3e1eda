"""What every HTTP backend shares: the pooled client, upstream failures mapped by table, model
discovery, and :class:`HTTPBackend` (session, auth, POST within the first-byte timeout, streaming).

Every wait on an upstream ends at the sooner of its own limit (first byte, idle gap) and the
request's total deadline, and the error says which limit it was and where it is set."""

from __future__ import annotations

import asyncio
import fnmatch
import functools
import socket
import time
from abc import abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import aiohttp
import orjson
from pydantic import BaseModel

from dragoman.backends.base import Backend, BackendDeps, CallOptions, TimeoutName, Timeouts, total_exceeded
from dragoman.core.events import Event
from dragoman.core.ids import completion_id, now
from dragoman.core.parts import PartTracker
from dragoman.core.sse import DEFAULT_MAX_FRAME, FrameTooLarge
from dragoman.core.types import ChatRequest
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
        return GatewayError(ErrorKind.TIMEOUT, f"upstream {backend!r} timed out ({timeouts.limit('connect')})")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return GatewayError(ErrorKind.UPSTREAM_ERROR, f"upstream {backend!r} closed the connection mid-answer")
    if isinstance(exc, aiohttp.ClientError):
        return GatewayError(ErrorKind.UPSTREAM_ERROR, f"upstream {backend!r} failed: {exc}")
    raise exc


async def read_json(response: aiohttp.ClientResponse, backend: str,
                    decode: Callable[[bytes], Any] = orjson.loads) -> Any:
    """The body as JSON; ``decode`` may read it into typed models (raising ``GatewayError`` for
    a well-formed answer of the wrong shape)."""
    body = await response.read()
    try:
        return decode(body)
    except orjson.JSONDecodeError as exc:
        raise GatewayError(ErrorKind.UPSTREAM_ERROR, f"upstream {backend!r} sent invalid JSON") from exc


def sooner(limit: TimeoutName, at: float, options: CallOptions) -> tuple[TimeoutName, float]:
    """``limit`` ending at loop time ``at``, or the total deadline when that comes first."""
    if options.deadline is not None and options.deadline <= at:
        return "total", options.deadline
    return limit, at


def timed_out(backend: str, limit: TimeoutName, timeouts: Timeouts) -> GatewayError:
    """The error for a wait on ``backend`` that ``limit`` ended."""
    if limit == "total":
        return total_exceeded(timeouts)
    if limit == "idle":
        return GatewayError(ErrorKind.TIMEOUT, f"upstream {backend!r} stalled mid-answer ({timeouts.limit('idle')})")
    return GatewayError(ErrorKind.TIMEOUT, f"upstream {backend!r} sent no answer in time ({timeouts.limit(limit)})")


async def iter_chunks(response: aiohttp.ClientResponse, options: CallOptions, backend: str) -> AsyncIterator[bytes]:
    """The body's chunks as they arrive, each wait bounded by the idle timeout and the total deadline."""
    content = response.content
    loop = asyncio.get_running_loop()
    idle = options.timeouts.idle
    while True:
        limit, at = sooner("idle", loop.time() + idle, options)
        try:
            async with asyncio.timeout_at(at):
                chunk = await content.readany()
        except TimeoutError as exc:
            raise timed_out(backend, limit, options.timeouts) from exc
        if not chunk:
            return
        yield chunk


# ------------------------------------------------------------------------- the HTTP backend

F = TypeVar("F")


class Frames(Protocol[F]):
    """Splits a streamed body into frames across chunk boundaries (``SSEDecoder``, ``NDJSONDecoder``)."""

    def feed(self, chunk: bytes) -> list[F]: ...

    def flush(self) -> list[F]: ...


@dataclass(slots=True)
class StreamCall(Generic[F]):
    """One streamed chat call in a backend's wire format: what to POST, how the answer's body
    splits into frames, each frame's events, and the events that close a body that ended cleanly.
    ``headers`` are this call's own request headers, over the backend's."""

    path: str
    body: dict[str, Any]
    frames: Frames[F]
    decode: Callable[[F], list[Event]]
    end: Callable[[], list[Event]]
    headers: Mapping[str, str] = field(default_factory=dict)


A = TypeVar("A")


@dataclass(slots=True)
class WholeCall(Generic[A]):
    """One chat call answered in one JSON body (a client that wants the whole answer): what to
    POST, how to decode the body, and the events the decoded answer stands for, the same its
    stream would have given. Like :class:`StreamCall` a description: the call's stream makes it."""

    path: str
    body: dict[str, Any]
    decode: Callable[[bytes], A]
    events: Callable[[A], list[Event]]
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class ErrorFields:
    """What an upstream error body says, for ``status_error``."""

    message: str
    code: str | None = None
    kind: ErrorKind | None = None
    param: str | None = None


async def read_error(response: aiohttp.ClientResponse, parse: Callable[[Any], ErrorFields | None]) -> ErrorFields:
    """An error body's fields by ``parse`` (given the decoded JSON), else the body's text."""
    raw = await response.read()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return ErrorFields(raw.decode("utf-8", errors="replace").strip()[:2000])
    return parse(body) or ErrorFields(raw.decode("utf-8", errors="replace")[:2000])


def tracked_end(tracker: PartTracker, model: str, backend: str, finish: str) -> list[Event]:
    """The events that close a flat stream rebuilt by ``tracker`` once its body ended, started if it
    never was. A body that ended before the upstream said how the answer finished (``finish``
    names the protocol's marker) was cut short: an error, never a normal end."""
    if not tracker.finished:
        raise GatewayError(ErrorKind.UPSTREAM_ERROR,
                           f"upstream {backend!r} closed the stream before the answer finished (no {finish})")
    events = [] if tracker.started else tracker.start(completion_id(), model, now())
    return events + tracker.end()


class ModelDiscovery:
    """The models an upstream lists, asked at most once every ``ttl`` seconds (one caller asks,
    the others wait for its answer); a failed call keeps what was known and says why."""

    def __init__(self, discover: Callable[[], Awaitable[dict[str, int]]], *, ttl: float,
                 timeout: float = 10.0) -> None:
        self._discover = discover  # model id -> created (unix seconds, 0 when unknown)
        self.ttl = ttl
        self.timeout = timeout
        self._found: dict[str, int] | None = None
        self._at = 0.0
        self._lock = asyncio.Lock()
        self.last_error: str | None = None

    async def select(self, patterns: list[str]) -> dict[str, int]:
        """Model id -> created for the names and globs in ``patterns``; only globs need the upstream."""
        explicit = [p for p in patterns if not any(c in p for c in "*?[")]
        if len(explicit) == len(patterns):
            return dict.fromkeys(explicit, 0)
        if self._stale():
            async with self._lock:
                if self._stale():
                    await self._refresh()
        found = {m: c for m, c in (self._found or {}).items() if any(fnmatch.fnmatchcase(m, p) for p in patterns)}
        return {**dict.fromkeys(explicit, 0), **found}

    def _stale(self) -> bool:
        return self._found is None or time.monotonic() - self._at > self.ttl

    async def probe(self) -> str | None:
        """List the upstream's models now (also with an explicit allow-list); the error, or None."""
        async with self._lock:
            await self._refresh()
        return self.last_error

    async def _refresh(self) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                self._found = await self._discover()
            self.last_error = None
        except (aiohttp.ClientError, TimeoutError, GatewayError, OSError) as exc:
            self.last_error = exc.message if isinstance(exc, GatewayError) else str(exc) or type(exc).__name__
            self._found = self._found or {}
        self._at = time.monotonic()


class HTTPBackend(Backend):
    """What every HTTP upstream shares: one pooled session, auth headers (``api_key: forward``
    sends the client's own key), POSTs bounded by the first-byte timeout with error statuses
    mapped by table, and the streaming loop. A subclass keeps only its wire format: how a chat
    call looks (``chat_call``) and what its error bodies say (``error_fields``)."""

    def __init__(self, name: str, settings: BaseModel, deps: BackendDeps | None, *, base_url: str,
                 api_key: str | None, headers: Mapping[str, str], max_connections: int, auth: str = "bearer",
                 max_frame_bytes: int = DEFAULT_MAX_FRAME) -> None:
        """``auth``: ``bearer`` (``Authorization: Bearer <key>``) or the header that carries the bare key.
        ``max_frame_bytes``: the longest stream line (or SSE event) accepted from the upstream."""
        super().__init__(name, settings, deps or BackendDeps())
        self.max_frame_bytes = max_frame_bytes
        self.base_url = base_url
        self._api_key = api_key  # a key, "forward", or None
        self._headers = {"Content-Type": "application/json", **headers}
        self._auth = auth
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = make_session(limit=self._max_connections)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = make_session(limit=self._max_connections)
        return self._session

    def headers(self, client_key: str | None) -> dict[str, str]:
        headers = dict(self._headers)
        key = client_key if self._api_key == "forward" else self._api_key
        if key:
            if self._auth == "bearer":
                headers["Authorization"] = f"Bearer {key}"
            else:
                headers[self._auth] = key
        return headers

    def error_fields(self, body: Any) -> ErrorFields | None:
        """The fields of a decoded error body in this upstream's shape; None to report its text."""
        return None

    def status_error(self, response: aiohttp.ClientResponse, fields: ErrorFields) -> GatewayError:
        return status_error(self.name, response.status, fields.message, headers=response.headers,
                            code=fields.code, kind=fields.kind, param=fields.param)

    async def request_json(self, method: str, path: str, *, body: dict[str, Any] | None = None,
                           params: Mapping[str, str] | None = None, headers: Mapping[str, str] | None = None) -> Any:
        """A small call off the answer path (discovery, counting): no client key, the caller's timeout."""
        async with self.session.request(method, self.base_url + path, params=params,
                                        headers={**self.headers(None), **(headers or {})},
                                        data=orjson.dumps(body) if body is not None else None) as response:
            if response.status != 200:
                raise self.status_error(response, await read_error(response, self.error_fields))
            return await read_json(response, self.name)

    async def post(self, path: str, body: dict[str, Any], options: CallOptions,
                   headers: Mapping[str, str] | None = None) -> aiohttp.ClientResponse:
        """POST and wait for a good status and headers within the first-byte timeout (connecting
        included) and the total deadline; the caller reads the body and releases the response."""
        limit, at = sooner("first_byte", asyncio.get_running_loop().time() + options.timeouts.first_byte, options)
        try:
            async with asyncio.timeout_at(at):
                return await self._send(path, body, options, headers)
        except TimeoutError as exc:
            raise timed_out(self.name, limit, options.timeouts) from exc

    async def post_json(self, path: str, body: dict[str, Any], options: CallOptions,
                        decode: Callable[[bytes], Any] = orjson.loads,
                        headers: Mapping[str, str] | None = None) -> Any:
        """``post`` and read the whole JSON answer (through ``decode``, see ``read_json``): at once
        when it came with the headers (as it usually does), else chunk by chunk, each wait bounded
        by the idle timeout and the deadline."""
        response = await self.post(path, body, options, headers)
        try:
            if response.content.is_eof():
                return await read_json(response, self.name, decode)
            raw = bytearray()
            async for chunk in iter_chunks(response, options, self.name):
                raw += chunk
            try:
                return decode(bytes(raw))
            except orjson.JSONDecodeError as exc:
                raise GatewayError(ErrorKind.UPSTREAM_ERROR, f"upstream {self.name!r} sent invalid JSON") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise exception_error(self.name, exc, options.timeouts) from exc
        finally:
            response.release()

    async def _send(self, path: str, body: dict[str, Any], options: CallOptions,
                    headers: Mapping[str, str] | None = None) -> aiohttp.ClientResponse:
        """The POST, its error statuses and client failures mapped; no deadline of its own."""
        try:
            response = await self.session.post(self.base_url + path, data=orjson.dumps(body),
                                               headers={**self.headers(options.client_api_key), **(headers or {})},
                                               timeout=client_timeout(options.timeouts))
        except (aiohttp.ClientError, OSError) as exc:
            raise exception_error(self.name, exc, options.timeouts) from exc
        if response.status != 200:
            try:
                fields = await read_error(response, self.error_fields)
            except (aiohttp.ClientError, OSError) as exc:
                raise exception_error(self.name, exc, options.timeouts) from exc
            finally:
                response.release()
            raise self.status_error(response, fields)
        return response

    @abstractmethod
    async def chat_call(self, request: ChatRequest, model: str,
                        options: CallOptions) -> StreamCall[Any] | WholeCall[Any]:
        """The call for ``request``, streamed or whole: a description (what to POST, how to decode
        it), built without talking to the upstream; :class:`HTTPEventStream` makes it."""

    def stream(self, request: ChatRequest, model: str, options: CallOptions) -> HTTPEventStream:
        return HTTPEventStream(self, request, model, options)


class HTTPEventStream:
    """One chat call's events, read chunk by chunk: each chunk the upstream sent is split into
    frames and decoded at once, and its events handed out one by one (``__anext__``) or all that
    are already here (:meth:`ready`: the gateway relays what one read delivered in one batch).

    A class rather than an async generator: handing out an event already decoded does not
    suspend anything. Its first ``__anext__`` makes the call; ``aclose`` releases the response."""

    __slots__ = ("_backend", "_call", "_done", "_failure", "_model", "_options", "_pending", "_request", "_response")

    def __init__(self, backend: HTTPBackend, request: ChatRequest, model: str, options: CallOptions) -> None:
        self._backend = backend
        self._request = request
        self._model = model
        self._options = options
        self._call: StreamCall[Any] | None = None
        self._response: aiohttp.ClientResponse | None = None
        self._pending: list[Event] = []  # decoded, not handed out yet (in reverse order: pop() is the next)
        self._done = False
        self._failure: GatewayError | None = None  # a frame's error, after the events before it

    def __aiter__(self) -> HTTPEventStream:
        return self

    async def __anext__(self) -> Event:
        while not self._pending:
            if self._done:
                failure, self._failure = self._failure, None
                if failure is not None:
                    raise failure
                raise StopAsyncIteration
            try:
                await self._read()
            except BaseException:
                self._done = True
                self._release()
                raise
        return self._pending.pop()

    def ready(self) -> list[Event]:
        """Every event already decoded (none when the next needs a read), in order."""
        pending = self._pending
        if not pending:
            return pending
        pending.reverse()
        self._pending = []
        return pending

    async def _read(self) -> None:
        """Decode the next chunk's events into ``_pending`` (the end's, once the body ended)."""
        backend, options = self._backend, self._options
        call, response = self._call, self._response
        if call is None:
            made = await backend.chat_call(self._request, self._model, options)
            if isinstance(made, WholeCall):
                answer = await backend.post_json(made.path, made.body, options, made.decode, made.headers)
                self._pending = made.events(answer)[::-1]
                self._done = True
                return
            self._call = call = made
            self._response = response = await backend.post(call.path, call.body, options, call.headers)
            return
        assert response is not None
        limit, at = sooner("idle", asyncio.get_running_loop().time() + options.timeouts.idle, options)
        try:
            try:
                async with asyncio.timeout_at(at):
                    chunk = await response.content.readany()
            except TimeoutError as exc:
                raise timed_out(backend.name, limit, options.timeouts) from exc
            decode = call.decode
            events: list[Event] = []
            try:
                if chunk:
                    for frame in call.frames.feed(chunk):
                        events += decode(frame)
                else:
                    for frame in call.frames.flush():
                        events += decode(frame)
                    events += call.end()
                    self._done = True
                    self._release()
            except GatewayError as exc:
                if not events:
                    raise
                self._failure = exc  # raised once the events decoded before it are out
                self._done = True
                self._release()
        except FrameTooLarge as exc:
            raise GatewayError(ErrorKind.UPSTREAM_ERROR,
                               f"upstream {backend.name!r} sent a stream line longer than {exc.limit} bytes "
                               "(max_frame_bytes)") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise exception_error(backend.name, exc, options.timeouts) from exc
        events.reverse()
        self._pending = events

    def _release(self) -> None:
        response = self._response
        if response is not None:
            self._response = None
            response.release()
            response.close()

    async def aclose(self) -> None:
        """Stop: the upstream call ends here (its connection is not reused mid-answer)."""
        self._done = True
        self._pending = []
        self._failure = None
        self._release()
