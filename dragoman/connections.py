"""Guards on client connections that uvicorn lacks: a deadline for the request head, and a cap on
open connections that answers in the client's dialect.

uvicorn closes a keep-alive connection that idles between requests, but waits for ever on a client
that connects and then sends its request head slowly or not at all, and its ``limit_concurrency``
answers a plain-text 503. :func:`guarded_protocol` extends uvicorn's HTTP protocol (httptools or
h11) with a timer that runs only while a request head is awaited: armed when the connection opens
and when the bytes of a next request start arriving, stopped as soon as a head is complete (uvicorn
then starts a request cycle). When it fires the connection is closed (``server.header_timeout``).
A body that stalls is the handler's to time out, since only it can answer in the client's dialect
(``read_json``: a 408 after ``server.body_timeout``). Each request on a connection opened beyond
``server.max_connections`` is answered with a 503 in its dialect, and the connection closed.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from dragoman.config import ServerConfig
from dragoman.core.ids import random_id
from dragoman.dialects.anthropic.routes import error_response as anthropic_error
from dragoman.dialects.ollama.routes import error_response as ollama_error
from dragoman.dialects.openai.routes import error_response as openai_error
from dragoman.errors import ErrorKind, GatewayError
from dragoman.gateway.logutil import ThrottledLog

log = logging.getLogger("dragoman.connections")

OVER_CAPACITY = "Too many connections to this gateway; try again shortly."
# A graceful shutdown (SIGTERM, a worker replaced on SIGHUP) gives a connection accepted moments before
# it, whose first request has not arrived yet, this long to send it (then answers it and closes)
# instead of cutting it: its client saw the port listening. uvicorn alone closes it at once.
SHUTDOWN_GRACE = 1.0


def dialect_error(scope: Scope, error: GatewayError, headers: dict[str, str]) -> Response:
    """``error`` in the dialect of the route the request was for (OpenAI's shape for any other)."""
    path: str = scope.get("path", "")
    if path.startswith("/api/"):
        return ollama_error(error, headers)
    if path.startswith("/v1/messages") or (
            path.startswith("/v1/models") and any(name == b"anthropic-version" for name, _ in scope["headers"])):
        return anthropic_error(error, random_id("req_", 20), headers)
    return openai_error(error, headers)


async def over_capacity(scope: Scope, receive: Receive, send: Send) -> None:
    """The app of a connection opened beyond ``max_connections``: a 503, then the connection closes."""
    error = GatewayError(ErrorKind.OVERLOADED, OVER_CAPACITY, retry_after=1.0)
    await dialect_error(scope, error, {"connection": "close"})(scope, receive, send)


@dataclass(slots=True, frozen=True)
class ConnectionLimits:
    header_timeout: float
    max_connections: int


class _Guarded(asyncio.Protocol):
    """Mixed in ahead of a uvicorn HTTP protocol class (see the module docstring)."""

    limits: ClassVar[ConnectionLimits]
    slow_log: ClassVar[ThrottledLog]
    full_log: ClassVar[ThrottledLog]
    # What this uses of uvicorn's protocol classes (the same in both).
    transport: asyncio.Transport
    connections: set[Any]
    cycle: Any  # the current request's cycle (None before the first), with ``response_complete``
    app: Any
    client: tuple[str, int] | None

    _head_timer: asyncio.TimerHandle | None = None
    _partial_head = False
    _shutting_down = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        limit = self.limits.max_connections
        if len(self.connections) > limit:
            self.app = over_capacity
            self.full_log(logging.WARNING, "%d connections open, more than server.max_connections (%d): "
                          "answering 503 and closing", len(self.connections), limit)
        self._await_head()

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle
        super().data_received(data)
        if self.cycle is not cycle:  # a request head is complete: uvicorn started its cycle
            self._head_arrived()
            if self._shutting_down:
                self.cycle.keep_alive = False  # answered, then closed
        elif self._between_requests():
            self._partial_head = True
            if self._head_timer is None:  # the next request is arriving (uvicorn's keep-alive timer is off)
                self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_arrived()
        super().connection_lost(exc)

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown, with :data:`SHUTDOWN_GRACE` for a connection's first request."""
        if self.cycle is None and not self.transport.is_closing():
            self._shutting_down = True
            asyncio.get_running_loop().call_later(SHUTDOWN_GRACE, self._shutdown_grace_over)
            return
        super().shutdown()  # type: ignore[misc]  # uvicorn's protocol, after this class in the MRO

    def _shutdown_grace_over(self) -> None:
        if self.cycle is None and not self.transport.is_closing():
            self.transport.close()

    def _between_requests(self) -> bool:
        return self.cycle is None or bool(self.cycle.response_complete)

    def _await_head(self) -> None:
        if not self.transport.is_closing():
            loop = asyncio.get_running_loop()
            self._head_timer = loop.call_later(self.limits.header_timeout, self._head_timed_out)

    def _head_arrived(self) -> None:
        self._partial_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._between_requests() or self.transport.is_closing():
            return
        if self._partial_head:  # a silent connection (a browser's preconnect) closes without a word
            self.slow_log(logging.WARNING, "closed a connection from %s that sent no complete request head "
                          "within %g s (server.header_timeout)", self.client[0] if self.client else "?",
                          self.limits.header_timeout)
        self.transport.close()


def guarded_protocol(http: str, server: ServerConfig) -> type[asyncio.Protocol]:
    """uvicorn's ``http`` protocol class (``"httptools"`` or ``"h11"``) with the ``server:`` guards,
    for ``uvicorn.Config(http=...)``."""
    base: type[asyncio.Protocol]
    if http == "httptools":
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    elif http == "h11":
        from uvicorn.protocols.http.h11_impl import H11Protocol as base
    else:
        raise ValueError(f"no connection guards for uvicorn's {http!r} protocol")
    limits = ConnectionLimits(server.header_timeout, server.max_connections)
    attributes = {"limits": limits, "slow_log": ThrottledLog(log, 10.0), "full_log": ThrottledLog(log, 10.0)}
    return type(f"Guarded{base.__name__}", (_Guarded, base), attributes)
