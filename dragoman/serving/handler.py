"""The one handler of every generation request, whatever its dialect.

It owns the request from end to end: the call's context and credentials, the body read (size
and stall limits), the dialect's parse, the gateway call, the client's disconnect, the stream's
lifetime, accumulation for a client that wants the whole answer, the error answers and the
headers. A dialect only translates (:class:`dragoman.core.dialect.Dialect`).

Every started stream is closed in one place, :meth:`GenerationHandler._relay` (``async with
aclosing``), however its answer ends. Streamed events go from the gateway's stream through the
dialect's encoder straight to ``send``: no generator between them, and the events one upstream read
delivered go out in one write (``batch()``, when the stream offers it).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Awaitable, Callable, Mapping
from contextlib import aclosing

from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from dragoman.core.dialect import Answer, Dialect, Generation
from dragoman.core.events import Event, StreamError
from dragoman.core.service import CallContext, ChatStream, GatewayService
from dragoman.core.types import ChatRequest, ChatResponse
from dragoman.errors import ErrorKind, GatewayError
from dragoman.serving.answers import internal_error, json_response, stream_head, wire_error_response
from dragoman.serving.body import DEFAULT_BODY_LIMIT, DEFAULT_BODY_TIMEOUT, receive_json
from dragoman.serving.context import call_context
from dragoman.serving.disconnect import DisconnectWatch
from dragoman.serving.keepalive import keepalive


def joined(call: Mapping[str, str], extra: Mapping[str, str]) -> Mapping[str, str]:
    """The call's headers plus the dialect's; a header in both keeps both values (the dialect's
    first), e.g. tools dropped by the dialect and by the model's settings."""
    if not extra:
        return call
    merged = {**call, **extra}
    for name, value in extra.items():
        if name in call:
            merged[name] = f"{value},{call[name]}"
    return merged


class GenerationHandler:
    """The ASGI app of one dialect's generation route (``operation`` tells the dialect which)."""

    __slots__ = ("body_limit", "body_timeout", "dialect", "operation", "service")

    def __init__(self, service: GatewayService, dialect: Dialect, operation: str, *,
                 body_limit: int = DEFAULT_BODY_LIMIT, body_timeout: float = DEFAULT_BODY_TIMEOUT) -> None:
        self.service = service
        self.dialect = dialect
        self.operation = operation
        self.body_limit = body_limit
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = call_context(scope, self.dialect.name)
        response: Response
        try:
            await self.service.authenticate(ctx)
            body = await receive_json(scope, receive, limit=self.body_limit, stall_after=self.body_timeout)
            generation = await self.dialect.parse(self.operation, body, Headers(scope=scope), ctx)
        except GatewayError as exc:
            response = self._error(exc, ctx)
        except Exception as exc:  # noqa: BLE001 - a bug: logged with its traceback, a JSON 500 to the client
            response = internal_error(scope["method"], scope["path"], exc)
        else:
            if not isinstance(generation, Answer):
                await self._generate(generation, ctx, scope, receive, send)
                return
            response = json_response(generation.body, headers=generation.headers or None)
        await response(scope, receive, send)

    async def _generate(self, generation: Generation, ctx: CallContext, scope: Scope, receive: Receive,
                        send: Send) -> None:
        """Start the answer, then stream it or answer it whole; a client that leaves stops the
        routing, the generation and the stream alike."""
        response: Response
        watch = DisconnectWatch(receive)
        with watch:
            try:
                first = await self._start(generation, generation.requests[0], ctx)
                if not generation.stream:
                    response = await self._whole(generation, first, ctx, send)
            except asyncio.CancelledError:
                if not watch.client_left():
                    raise
                response = self._error(GatewayError(ErrorKind.CANCELLED, "client disconnected"), ctx)
            except GatewayError as exc:
                response = self._error(exc, ctx)
            except Exception as exc:  # noqa: BLE001 - a bug, before the first byte: a JSON 500
                response = internal_error(scope["method"], scope["path"], exc)
            else:
                if generation.stream:
                    await self._stream(generation, first, ctx, watch, send)
                    return
        await response(scope, receive, send)

    def _start(self, generation: Generation, request: ChatRequest, ctx: CallContext) -> Awaitable[ChatStream]:
        start = generation.start
        return start(request, ctx) if start is not None else self.service.chat(request, ctx)

    async def _whole(self, generation: Generation, first: ChatStream, ctx: CallContext, send: Send) -> Response:
        """Every request's answer accumulated, one after another; a failure after routing keeps
        the headers naming the deployment that failed."""
        responses: list[ChatResponse] = []
        stream = first
        needed = generation.needed
        for index, request in enumerate(generation.requests):
            if index:
                if needed is not None and not needed(index):
                    continue
                stream = await self._start(generation, request, ctx)
            accumulator = generation.accumulator()
            try:
                await self._relay(stream, accumulator.add, send)
                responses += accumulator.results()
            except GatewayError as exc:
                return self._error(exc, ctx, stream.headers)
        body = generation.render(responses)
        if generation.settle is not None:
            await generation.settle()
        return json_response(body, headers=joined(first.headers, generation.headers))

    async def _stream(self, generation: Generation, first: ChatStream, ctx: CallContext, watch: DisconnectWatch,
                      send: Send) -> None:
        """The frames of every request's answer, as they come, then the encoder's tail."""
        encoder = generation.encoder()
        head: Message | None = {"type": "http.response.start", "status": 200,
                                "headers": stream_head(generation.media_type,
                                                       joined(first.headers, generation.headers))}
        stream = first
        needed = generation.needed
        try:
            for index, request in enumerate(generation.requests):
                if index:
                    if needed is not None and not needed(index):
                        continue
                    try:
                        stream = await self._start(generation, request, ctx)
                    except GatewayError as exc:
                        await send({"type": "http.response.body", "body": encoder.encode(StreamError(exc)),
                                    "more_body": True})
                        break
                ended = await self._relay(stream, encoder.encode, send, head=head,
                                          ping_interval=generation.ping_interval, ping=generation.ping)
                head = None
                if not ended:
                    break
            if generation.settle is not None:
                await generation.settle()
            await send({"type": "http.response.body", "body": encoder.tail(), "more_body": False})
        except asyncio.CancelledError:
            if not watch.client_left():
                raise
        except OSError:
            pass  # the connection broke under a write: the client is gone

    @staticmethod
    async def _relay(stream: ChatStream, sink: Callable[[Event], bytes | None], send: Send, *,
                     head: Message | None = None, ping_interval: float | None = None, ping: bytes = b"") -> bool:
        """Each event into ``sink`` and its frame (if any) to ``send``, after ``head``; False when
        the stream ended with an error. The stream's one owner: it is closed here, always."""
        async with aclosing(stream):
            if head is not None:
                await send(head)
            if ping_interval is None:
                batches = getattr(stream, "batch", None)
                if batches is not None:
                    return await _pump_batches(batches, sink, send)
                return await _pump(stream, sink, send, ping)
            async with aclosing(keepalive(aiter(stream), ping_interval)) as ticks:
                return await _pump(ticks, sink, send, ping)

    def _error(self, error: GatewayError, ctx: CallContext, headers: Mapping[str, str] | None = None) -> Response:
        return wire_error_response(error, self.dialect.render_error(error, ctx), headers)


async def _pump_batches(batches: Callable[[], Awaitable[list[Event]]], sink: Callable[[Event], bytes | None],
                        send: Send) -> bool:
    """Like :func:`_pump`, for a stream that hands out what one upstream read delivered at once
    (``GatewayChatStream.batch``): their frames go out in one write."""
    while batch := await batches():
        frames = [frame for event in batch if (frame := sink(event))]
        if frames:
            await send({"type": "http.response.body", "body": b"".join(frames), "more_body": True})
        if batch[-1].__class__ is StreamError:
            return False
    return True


async def _pump(source: AsyncIterable[Event] | AsyncIterable[Event | None], sink: Callable[[Event], bytes | None],
                send: Send, ping: bytes) -> bool:
    async for event in source:
        frame = sink(event) if event is not None else ping
        if frame:
            await send({"type": "http.response.body", "body": frame, "more_body": True})
        if event.__class__ is StreamError:
            return False
    return True
