"""The Responses API HTTP surface: ``POST /v1/responses``, ``GET`` and ``DELETE /v1/responses/{id}``,
``GET /v1/responses/{id}/input_items`` and ``POST /v1/responses/input_tokens``.

Hosted tools (``web_search``, ``file_search``...) reach a model only when its backend speaks the
Responses API upstream (capability ``hosted_tools``). For any other model they are dropped, named
in the ``x-dragoman-dropped-tools`` header and the log, or, with ``responses.hosted_tools:
reject``, refused with a 400; a ``tool_choice`` that forces a dropped tool is always a 400.
Errors are OpenAI's ``{"error": {...}}`` before the stream starts, an ``error`` event and
``response.failed`` after.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from dragoman.core.accumulate import replay_events
from dragoman.core.dialect import Generation, GenerationRoute, WireError
from dragoman.core.ids import now
from dragoman.core.service import CallContext, ChatStream, GatewayService
from dragoman.core.types import ChatRequest, ChatResponse, Message, Role
from dragoman.dialects.responses import convert, output
from dragoman.dialects.responses.convert import ResponsesRequest
from dragoman.dialects.responses.store import ResponseStore, StoredResponse
from dragoman.dialects.responses.stream import Completed, ResponseEncoder
from dragoman.errors import ErrorKind, GatewayError
from dragoman.serving.answers import error_headers, json_response
from dragoman.serving.body import read_json
from dragoman.serving.context import call_context
from dragoman.serving.endpoints import Endpoint, routes

log = logging.getLogger("dragoman.responses")

DROPPED_HEADER = "x-dragoman-dropped-tools"
PREFIXES = ("/v1", "")
HostedPolicy = Literal["drop", "reject"]


def error_response(error: GatewayError, headers: dict[str, str] | None = None) -> Response:
    return json_response(output.error_body(error), status=error.status, headers=error_headers(error, headers))


class ResponsesDialect:
    name = "responses"

    def __init__(self, service: GatewayService, store: ResponseStore, *, hosted_tools: HostedPolicy = "drop") -> None:
        self.service = service
        self.store = store
        self.hosted_tools = hosted_tools

    def routes(self) -> list[BaseRoute]:
        table: list[tuple[str, Endpoint, list[str]]] = [
            ("/responses/input_tokens", self.input_tokens, ["POST"]),
            ("/responses/{response_id}", self.retrieve, ["GET"]),
            ("/responses/{response_id}", self.delete, ["DELETE"]),
            ("/responses/{response_id}/input_items", self.list_input_items, ["GET"]),
        ]
        return routes(table, PREFIXES)

    async def _context(self, request: Request) -> CallContext:
        ctx = call_context(request.scope, self.name)
        await self.service.authenticate(ctx)
        return ctx

    # ------------------------------------------------------------------ generation

    def generation_routes(self) -> Sequence[GenerationRoute]:
        return [GenerationRoute(prefix + "/responses", "create") for prefix in PREFIXES]

    async def parse(self, operation: str, body: Any, headers: Mapping[str, str], ctx: CallContext) -> Generation:
        req = convert.parse_create(body, self._previous(body, ctx))
        hosted = await self._hosted(req, ctx)
        return Generation(
            [req.chat], lambda: ResponseEncoder(req, output.response_id(), now(), on_complete=self._keeper(req, ctx)),
            lambda responses: self._render(req, ctx, responses[0]), headers=hosted,
            start=lambda request, ctx: self._start(req, ctx))

    def render_error(self, error: GatewayError, ctx: CallContext) -> WireError:
        return WireError(error.status, output.error_body(error))

    def _render(self, req: ResponsesRequest, ctx: CallContext, response: ChatResponse) -> dict[str, Any]:
        """The whole answer, built by the stream's encoder from the accumulated answer (and kept)."""
        encoder = ResponseEncoder(req, output.response_id(), now(), frames=False)
        for event in replay_events(response):
            encoder.encode(event)
        assert encoder.final is not None  # replay_events ends with MessageEnd
        keep = self._keeper(req, ctx)
        if keep is not None and encoder.final["status"] != "failed":
            keep(encoder.final, response)
        return encoder.final

    async def _start(self, req: ResponsesRequest, ctx: CallContext) -> ChatStream:
        """Start the answer; with ``truncation: auto``, a prompt too long for the model loses its
        oldest turns, half of them at a time (so a few tries at most), until it fits."""
        while True:
            try:
                return await self.service.chat(req.chat, ctx)
            except GatewayError as exc:
                if exc.kind is not ErrorKind.CONTEXT_TOO_LONG or req.body.truncation != "auto" or \
                        not drop_oldest_turns(req.chat):
                    raise
                log.info("truncation auto: dropped the oldest turns for model %s (request %s)", req.chat.model,
                         ctx.request_id)

    def _previous(self, body: Any, ctx: CallContext) -> list[Message] | None:
        previous_id = body.get("previous_response_id") if isinstance(body, dict) else None
        if previous_id is None:
            return None
        if not isinstance(previous_id, str):
            raise GatewayError(ErrorKind.INVALID_REQUEST, "previous_response_id must be a string",
                               param="previous_response_id")
        if not self.store.enabled:
            raise GatewayError(ErrorKind.INVALID_REQUEST, "previous_response_id is not available: this gateway "
                               "keeps no responses (responses.store_entries is 0); send the whole conversation",
                               param="previous_response_id")
        stored = self.store.get(previous_id, ctx.api_key)
        if stored is None:
            raise GatewayError(ErrorKind.NOT_FOUND, f"Previous response with id '{previous_id}' not found (this "
                               "gateway keeps recent responses in memory only)", param="previous_response_id",
                               code="previous_response_not_found")
        return stored.history

    def _keeper(self, req: ResponsesRequest, ctx: CallContext) -> Completed | None:
        if not req.store or not self.store.enabled:
            return None

        def keep(body: dict[str, Any], response: ChatResponse) -> None:
            history = [*req.history, Message(Role.ASSISTANT, list(response.parts))]
            self.store.put(body["id"], ctx.api_key, body, history, output.input_items(req.raw_input))
        return keep

    async def _hosted(self, req: ResponsesRequest, ctx: CallContext) -> dict[str, str]:
        """Pass hosted tools to a model that runs them; otherwise drop them (and say so) or refuse."""
        if not req.hosted_tools and req.hosted_choice is None:
            return {}
        entry = await self.service.get_model(req.chat.model, ctx)
        if entry.info.capabilities.hosted_tools:
            return {}
        kinds = [str(t.get("type")) for t in req.hosted_tools]
        if req.hosted_choice is not None:
            raise GatewayError(ErrorKind.INVALID_REQUEST, f"tool_choice forces the hosted tool "
                               f"{req.hosted_choice!r}, which model {req.chat.model!r} cannot run (hosted tools "
                               "run only on upstreams that speak the Responses API)", param="tool_choice")
        if self.hosted_tools == "reject":
            raise GatewayError(ErrorKind.INVALID_REQUEST, f"hosted tools ({', '.join(kinds)}) cannot run on model "
                               f"{req.chat.model!r}; remove them (this gateway's responses.hosted_tools is "
                               "'reject')", param="tools")
        req.without_hosted_tools()
        choice = req.chat.tool_choice
        if choice is not None and choice.mode == "required" and not req.chat.tools:
            raise GatewayError(ErrorKind.INVALID_REQUEST, "tool_choice 'required' needs tools, and every tool "
                               f"given is a hosted tool that model {req.chat.model!r} cannot run", param="tool_choice")
        log.info("dropped hosted tools %s for model %s (request %s)", ",".join(kinds), req.chat.model,
                 ctx.request_id)
        return {DROPPED_HEADER: ",".join(kinds)}

    async def input_tokens(self, request: Request) -> Response:
        """The prompt's token count: exact when the model's backend has a tokenizer (or its own
        count), else an estimate, which the ``x-dragoman-token-count`` header says."""
        try:
            ctx = await self._context(request)
            body = await read_json(request)
            if isinstance(body, dict):
                body = {**body, "stream": False, "input": body.get("input") or []}
            req = convert.parse_create(body, self._previous(body, ctx))
            count = await self.service.count_tokens(req.chat, ctx)
        except GatewayError as exc:
            return error_response(exc)
        return json_response({"object": "response.input_tokens", "input_tokens": count.tokens},
                             headers={"x-dragoman-token-count": "exact" if count.exact else "estimated"})

    async def retrieve(self, request: Request) -> Response:
        try:
            ctx = await self._context(request)
            if request.query_params.get("stream") in ("true", "1"):
                raise GatewayError(ErrorKind.INVALID_REQUEST, "replaying a stored response as a stream is not "
                                   "supported", param="stream")
            stored = self._stored(request, ctx)
        except GatewayError as exc:
            return error_response(exc)
        return json_response(stored)

    async def delete(self, request: Request) -> Response:
        try:
            ctx = await self._context(request)
            self._stored(request, ctx)
        except GatewayError as exc:
            return error_response(exc)
        response_id = request.path_params["response_id"]
        self.store.delete(response_id, ctx.api_key)
        return json_response({"id": response_id, "object": "response.deleted", "deleted": True})

    async def list_input_items(self, request: Request) -> Response:
        """A stored response's input items, a page at a time (``order``, ``after``, ``limit``)."""
        try:
            ctx = await self._context(request)
            stored = self._entry(request, ctx)
            order, after, limit = _page_params(request)
        except GatewayError as exc:
            return error_response(exc)
        items = stored.input_items if order == "asc" else stored.input_items[::-1]
        if after is not None:
            ids = [item["id"] for item in items]
            if after not in ids:
                return error_response(GatewayError(ErrorKind.NOT_FOUND, f"No input item found with id '{after}'.",
                                                   param="after", code="not_found"))
            items = items[ids.index(after) + 1:]
        page = items[:limit]
        return json_response({"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                              "last_id": page[-1]["id"] if page else None, "has_more": len(items) > limit})

    def _stored(self, request: Request, ctx: CallContext) -> dict[str, Any]:
        return self._entry(request, ctx).body

    def _entry(self, request: Request, ctx: CallContext) -> StoredResponse:
        response_id = request.path_params["response_id"]
        stored = self.store.get(response_id, ctx.api_key)
        if stored is None:
            raise GatewayError(ErrorKind.NOT_FOUND, f"No response found with id '{response_id}'.",
                               code="not_found")
        return stored


def _page_params(request: Request) -> tuple[str, str | None, int]:
    """``order`` (``desc`` by default, as the API), ``after`` and ``limit`` (1 to 100, 20 by default)."""
    query = request.query_params
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise GatewayError(ErrorKind.INVALID_REQUEST, "order must be 'asc' or 'desc'", param="order")
    raw_limit = query.get("limit", "20")
    try:
        limit = int(raw_limit)
    except ValueError:
        limit = 0
    if not 1 <= limit <= 100:
        raise GatewayError(ErrorKind.INVALID_REQUEST, "limit must be an integer from 1 to 100", param="limit")
    return order, query.get("after"), limit


def drop_oldest_turns(chat: ChatRequest) -> bool:
    """Drop the older half of the conversation's turns (a turn starts at a user message, so a tool
    call keeps its result), keeping system messages; False when one turn is all that is left."""
    starts = [i for i, m in enumerate(chat.messages) if m.role is Role.USER]
    if len(starts) < 2:
        return False
    cut = starts[len(starts) // 2]
    chat.messages = [m for i, m in enumerate(chat.messages) if i >= cut or m.role is Role.SYSTEM]
    return True
