"""The Anthropic Messages HTTP surface: ``/v1/messages``, ``/v1/messages/count_tokens``, models.

Any ``anthropic-version`` (or none) is accepted; credentials come as ``x-api-key`` or
``Authorization: Bearer`` (SDK 2.x sends the key as a bearer). Every request error is an
HTTP 4xx before any stream byte, so ``messages.create(stream=True)`` raises at once.
``GET /v1/models`` is shared with the OpenAI dialect; the app sends requests carrying an
``anthropic-version`` header to :meth:`AnthropicDialect.list_models` here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from dragoman.core.dialect import Generation, GenerationRoute, WireError
from dragoman.core.service import CallContext, GatewayService
from dragoman.dialects.anthropic import convert
from dragoman.dialects.anthropic.stream import PING, PING_INTERVAL, EventEncoder
from dragoman.errors import ErrorKind, GatewayError
from dragoman.protocols.anthropic import BETA_HEADER
from dragoman.serving.answers import error_headers, json_response
from dragoman.serving.body import read_json
from dragoman.serving.endpoints import Endpoint, guarded, routes

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

    def generation_routes(self) -> Sequence[GenerationRoute]:
        return [GenerationRoute("/v1/messages", "messages")]

    async def parse(self, operation: str, body: Any, headers: Mapping[str, str], ctx: CallContext) -> Generation:
        chat = convert.parse_messages(body, beta=headers.get(BETA_HEADER))
        return Generation([chat], lambda: EventEncoder(chat.model),
                          lambda responses: convert.render_message(responses[0], chat.model),
                          headers={"request-id": ctx.request_id}, ping=PING, ping_interval=self.ping_interval)

    def render_error(self, error: GatewayError, ctx: CallContext) -> WireError:
        return WireError(convert.error_status(error), convert.error_body(error, ctx.request_id),
                         {"request-id": ctx.request_id})

    def endpoint(self, handler: Callable[[Request, CallContext], Awaitable[Response]]) -> Endpoint:
        return guarded(self.name, self.service, self.render_error, handler)

    def routes(self) -> list[BaseRoute]:
        return routes([("/v1/messages/count_tokens", self.endpoint(self.count_tokens), ["POST"])])

    async def count_tokens(self, request: Request, ctx: CallContext) -> Response:
        chat = convert.parse_count_tokens(await read_json(request), beta=request.headers.get(BETA_HEADER))
        count = await self.service.count_tokens(chat, ctx)
        # Exact when the backend has a tokenizer; otherwise an estimate, and the header says so.
        return json_response({"input_tokens": count.tokens},
                             headers={"request-id": ctx.request_id,
                                      "x-dragoman-token-count": "exact" if count.exact else "estimated"})

    async def list_models(self, request: Request, ctx: CallContext) -> Response:
        """``GET /v1/models`` in Anthropic's shape, paginated by ``after_id``/``before_id``/``limit``."""
        limit = _limit(request.query_params.get("limit"))
        entries = await self.service.list_models(ctx)
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

    async def retrieve_model(self, request: Request, ctx: CallContext) -> Response:
        entry = await self.service.get_model(request.path_params["model_id"], ctx)
        return json_response(convert.model_body(entry), headers={"request-id": ctx.request_id})


def _limit(raw: str | None) -> int:
    if raw is None:
        return 20
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE:
        raise GatewayError(ErrorKind.INVALID_REQUEST, f"limit must be an integer from 1 to {MAX_PAGE}",
                           param="limit")
    return int(raw)
