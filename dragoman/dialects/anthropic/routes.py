"""The Anthropic Messages HTTP surface: ``/v1/messages``, ``/v1/messages/count_tokens``, models.

Any ``anthropic-version`` (or none) is accepted; credentials come as ``x-api-key`` or
``Authorization: Bearer`` (SDK 2.x sends the key as a bearer). Every request error is an
HTTP 4xx before any stream byte, so ``messages.create(stream=True)`` raises at once.
``GET /v1/models`` is shared with the OpenAI dialect; the app sends requests carrying an
``anthropic-version`` header to :meth:`AnthropicDialect.list_models` here.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from dragoman.core.accumulate import accumulate
from dragoman.core.service import GatewayService
from dragoman.dialects.anthropic import convert
from dragoman.dialects.anthropic.convert import BETA_HEADER
from dragoman.dialects.anthropic.stream import PING_INTERVAL, EventEncoder, sse_frames
from dragoman.dialects.common import (
    FrameStreamResponse,
    call_context,
    error_headers,
    json_response,
    read_json,
    until_disconnect,
)
from dragoman.errors import ErrorKind, GatewayError

MAX_PAGE = 1000


def error_response(error: GatewayError, request_id: str, headers: dict[str, str] | None = None) -> Response:
    extra = error_headers(error, headers)
    extra["request-id"] = request_id
    return json_response(convert.error_body(error, request_id), status=convert.error_status(error), headers=extra)


class AnthropicDialect:
    """Every answer, success or error, carries the ``request-id`` header and every error body its
    ``request_id``, as Anthropic's do: the context (and its id) exists before authentication. An
    in-stream ``error`` event keeps the documented shape; the stream's header names the request."""

    name = "anthropic"

    def __init__(self, service: GatewayService, *, ping_interval: float = PING_INTERVAL) -> None:
        self.service = service
        self.ping_interval = ping_interval

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v1/messages", self.messages, methods=["POST"]),
            Route("/v1/messages/count_tokens", self.count_tokens, methods=["POST"]),
        ]

    async def messages(self, request: Request) -> Response:
        ctx = call_context(request, self.name)
        try:
            await self.service.authenticate(ctx)
            chat = convert.parse_messages(await read_json(request), beta=request.headers.get(BETA_HEADER))
            stream = await until_disconnect(request, self.service.chat(chat, ctx))  # a client leaving stops routing
        except GatewayError as exc:
            return error_response(exc, ctx.request_id)
        headers = {**stream.headers, "request-id": ctx.request_id}
        if chat.stream:
            encoder = EventEncoder(chat.model)
            return FrameStreamResponse(sse_frames(stream, encoder, ping_interval=self.ping_interval),
                                       media_type="text/event-stream", headers=headers)
        try:
            response = await until_disconnect(request, accumulate(stream))
        except GatewayError as exc:
            return error_response(exc, ctx.request_id, stream.headers)
        finally:
            await stream.aclose()
        return json_response(convert.render_message(response, chat.model), headers=headers)

    async def count_tokens(self, request: Request) -> Response:
        ctx = call_context(request, self.name)
        try:
            await self.service.authenticate(ctx)
            chat = convert.parse_count_tokens(await read_json(request), beta=request.headers.get(BETA_HEADER))
            count = await self.service.count_tokens(chat, ctx)
        except GatewayError as exc:
            return error_response(exc, ctx.request_id)
        # Exact when the backend has a tokenizer; otherwise an estimate, and the header says so.
        return json_response({"input_tokens": count.tokens},
                             headers={"request-id": ctx.request_id,
                                      "x-dragoman-token-count": "exact" if count.exact else "estimated"})

    async def list_models(self, request: Request) -> Response:
        """``GET /v1/models`` in Anthropic's shape, paginated by ``after_id``/``before_id``/``limit``."""
        ctx = call_context(request, self.name)
        try:
            await self.service.authenticate(ctx)
            limit = _limit(request.query_params.get("limit"))
            entries = await self.service.list_models(ctx)
        except GatewayError as exc:
            return error_response(exc, ctx.request_id)
        ids = [e.id for e in entries]
        after, before = request.query_params.get("after_id"), request.query_params.get("before_id")
        if after:
            start = ids.index(after) + 1 if after in ids else len(ids)
            page, has_more = entries[start:start + limit], start + limit < len(entries)
        elif before:
            end = ids.index(before) if before in ids else 0
            page, has_more = entries[max(0, end - limit):end], end - limit > 0
        else:
            page, has_more = entries[:limit], limit < len(entries)
        return json_response({"data": [convert.model_body(e) for e in page], "has_more": has_more,
                              "first_id": page[0].id if page else None, "last_id": page[-1].id if page else None},
                             headers={"request-id": ctx.request_id})

    async def retrieve_model(self, request: Request) -> Response:
        ctx = call_context(request, self.name)
        try:
            await self.service.authenticate(ctx)
            entry = await self.service.get_model(request.path_params["model_id"], ctx)
        except GatewayError as exc:
            return error_response(exc, ctx.request_id)
        return json_response(convert.model_body(entry), headers={"request-id": ctx.request_id})


def _limit(raw: str | None) -> int:
    if raw is None:
        return 20
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE:
        raise GatewayError(ErrorKind.INVALID_REQUEST, f"limit must be an integer from 1 to {MAX_PAGE}",
                           param="limit")
    return int(raw)
