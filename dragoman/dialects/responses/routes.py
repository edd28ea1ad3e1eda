"""The Responses API HTTP surface: ``POST /v1/responses`` and ``POST /v1/responses/input_tokens``;
stored responses (``GET``, ``DELETE``, ``input_items``, ``cancel``) are :mod:`.stored`'s, and
``background: true`` is :mod:`.background`'s.

Hosted tools (``web_search``, ``file_search``...) reach a model only when its backend speaks the
Responses API upstream (capability ``hosted_tools``). For any other model they are dropped, named
in the ``x-dragoman-dropped-tools`` header and the log, or, with ``responses.hosted_tools:
reject``, refused with a 400; a ``tool_choice`` that forces a dropped tool is always a 400.
Errors are OpenAI's ``{"error": {...}}`` before the stream starts, an ``error`` event and
``response.failed`` after.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Literal

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from dragoman.core.dialect import Answer, Generation, GenerationRoute, WireError
from dragoman.core.ids import now
from dragoman.core.service import CallContext, ChatStream, GatewayService
from dragoman.core.types import ChatRequest, ChatResponse, Role
from dragoman.dialects.responses import convert, output
from dragoman.dialects.responses.background import BackgroundResponses
from dragoman.dialects.responses.convert import ResponsesRequest
from dragoman.dialects.responses.store import ResponseStore
from dragoman.dialects.responses.stored import StoredResponses
from dragoman.dialects.responses.stream import Completed, ResponseEncoder, whole_response
from dragoman.errors import ErrorKind, GatewayError
from dragoman.serving.answers import json_response
from dragoman.serving.body import read_json
from dragoman.serving.endpoints import Endpoint, guarded, routes

log = logging.getLogger("dragoman.responses")

DROPPED_HEADER = "x-dragoman-dropped-tools"
PREFIXES = ("/v1", "")
HostedPolicy = Literal["drop", "reject"]


class ResponsesDialect:
    name = "responses"

    def __init__(self, service: GatewayService, store: ResponseStore, background: BackgroundResponses, *,
                 hosted_tools: HostedPolicy = "drop") -> None:
        self.service = service
        self.stored = StoredResponses(service, store, background)
        self.background = background
        self.hosted_tools = hosted_tools

    def routes(self) -> list[BaseRoute]:
        stored, endpoint = self.stored, self.endpoint
        table: list[tuple[str, Endpoint, list[str]]] = [
            ("/responses/input_tokens", endpoint(self.input_tokens), ["POST"]),
            ("/responses/{response_id}", endpoint(stored.retrieve), ["GET"]),
            ("/responses/{response_id}", endpoint(stored.delete), ["DELETE"]),
            ("/responses/{response_id}/input_items", endpoint(stored.list_input_items), ["GET"]),
            ("/responses/{response_id}/cancel", endpoint(stored.cancel), ["POST"]),
        ]
        return routes(table, PREFIXES)

    def endpoint(self, handler: Callable[[Request, CallContext], Awaitable[Response]]) -> Endpoint:
        return guarded(self.name, self.service, self.render_error, handler)

    # ------------------------------------------------------------------ generation

    def generation_routes(self) -> Sequence[GenerationRoute]:
        return [GenerationRoute(prefix + "/responses", "create") for prefix in PREFIXES]

    async def parse(self, operation: str, body: Any, headers: Mapping[str, str],
                    ctx: CallContext) -> Generation | Answer:
        req = convert.parse_create(body, await self.stored.previous(body, ctx))
        hosted = await self._hosted(req, ctx)
        if req.body.background:
            return Answer(await self.background.create(req, ctx, self._start), headers=hosted)
        # A kept answer's row is written before its last bytes go out (``settle``), so a client
        # that chains right after finds it on any worker.
        completed, pending = self.stored.keeper(req, ctx)
        return Generation(
            [req.chat], lambda: ResponseEncoder(req, output.response_id(), now(), on_complete=completed),
            lambda responses: self._render(req, responses[0], completed), headers=hosted,
            start=lambda request, ctx: self._start(req, ctx), settle=pending.wait if pending is not None else None)

    def render_error(self, error: GatewayError, ctx: CallContext) -> WireError:
        return WireError(error.status, output.error_body(error))

    def _render(self, req: ResponsesRequest, response: ChatResponse, completed: Completed | None) -> dict[str, Any]:
        """The whole answer's response object (and kept)."""
        body = whole_response(req, output.response_id(), now(), response)
        if completed is not None and body["status"] != "failed":
            completed(body, response)
        return body

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

    async def input_tokens(self, request: Request, ctx: CallContext) -> Response:
        """The prompt's token count: exact when the model's backend has a tokenizer (or its own
        count), else an estimate, which the ``x-dragoman-token-count`` header says."""
        body = await read_json(request)
        if isinstance(body, dict):
            body = {**body, "stream": False, "input": body.get("input") or []}
        req = convert.parse_create(body, await self.stored.previous(body, ctx))
        count = await self.service.count_tokens(req.chat, ctx)
        return json_response({"object": "response.input_tokens", "input_tokens": count.tokens},
                             headers={"x-dragoman-token-count": "exact" if count.exact else "estimated"})


def drop_oldest_turns(chat: ChatRequest) -> bool:
    """Drop the older half of the conversation's turns (a turn starts at a user message, so a tool
    call keeps its result), keeping system messages; False when one turn is all that is left."""
    starts = [i for i, m in enumerate(chat.messages) if m.role is Role.USER]
    if len(starts) < 2:
        return False
    cut = starts[len(starts) // 2]
    chat.messages = [m for i, m in enumerate(chat.messages) if i >= cut or m.role is Role.SYSTEM]
    return True
