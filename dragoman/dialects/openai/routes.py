"""The OpenAI-compatible HTTP surface, with and without the ``/v1`` prefix."""

from __future__ import annotations

import array
import base64
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from dragoman.core.models import ModelEntry
from dragoman.core.service import CallContext, GatewayService
from dragoman.dialects.bulk import built, json_bytes_response, object_with_list
from dragoman.dialects.common import (
    FrameStreamResponse,
    call_context,
    error_headers,
    json_response,
    read_json,
    until_disconnect,
)
from dragoman.dialects.openai import convert
from dragoman.dialects.openai.stream import ChunkEncoder, choice_frames, sse_frames, whole_choices
from dragoman.errors import GatewayError
from dragoman.protocols.openai import error_body

Handler = Callable[[Request], Awaitable[Response]]


def error_response(error: GatewayError, headers: dict[str, str] | None = None) -> Response:
    extra = error_headers(error, headers)
    return json_response(error_body(error), status=error.status, headers=extra)


def _base64(vector: list[float]) -> str:
    floats = array.array("f", vector)
    if sys.byteorder == "big":
        floats.byteswap()  # the wire format is little-endian float32
    return base64.b64encode(floats.tobytes()).decode("ascii")


def model_body(entry: ModelEntry) -> dict[str, Any]:
    return {"id": entry.id, "object": "model", "created": entry.info.created, "owned_by": entry.backend}


class OpenAIDialect:
    name = "openai"

    def __init__(self, service: GatewayService) -> None:
        self.service = service

    def routes(self) -> list[BaseRoute]:
        table: list[tuple[str, Handler, list[str]]] = [
            ("/chat/completions", self.chat_completions, ["POST"]),
            ("/completions", self.completions, ["POST"]),
            ("/embeddings", self.embeddings, ["POST"]),
            ("/models", self.list_models, ["GET"]),
            ("/models/{model_id:path}", self.retrieve_model, ["GET"]),
            ("/tokenize", self.tokenize, ["POST"]),
            ("/detokenize", self.detokenize, ["POST"]),
        ]
        routes: list[BaseRoute] = []
        for prefix in ("/v1", ""):
            routes += [Route(prefix + path, handler, methods=methods) for path, handler, methods in table]
        return routes

    async def _context(self, request: Request) -> CallContext:
        ctx = call_context(request, self.name)
        await self.service.authenticate(ctx)
        return ctx

    async def chat_completions(self, request: Request) -> Response:
        return await self._generate(request, completion=False)

    async def completions(self, request: Request) -> Response:
        return await self._generate(request, completion=True)

    async def _generate(self, request: Request, *, completion: bool) -> Response:
        try:
            ctx = await self._context(request)
            body = await read_json(request)
            choices = convert.parse_completion(body) if completion else convert.parse_chat(body)
            chat = choices.first
            # A client that leaves stops the routing and, for a whole answer, the generation too.
            if not chat.stream:
                return await until_disconnect(request, self._whole(choices, ctx, completion=completion))
            stream = await until_disconnect(request, self.service.chat(chat, ctx))
        except GatewayError as exc:
            return error_response(exc)
        if len(choices.requests) > 1:
            frames = choice_frames(stream, choices, lambda r: self.service.chat(r, ctx), completion=completion)
        else:
            frames = sse_frames(stream, ChunkEncoder(chat.model, include_usage=chat.include_usage,
                                                     completion=completion, prompt_chars=len(chat.prompt or "")))
        return FrameStreamResponse(frames, media_type="text/event-stream", headers=stream.headers)

    async def _whole(self, choices: convert.Choices, ctx: CallContext, *, completion: bool) -> Response:
        """The whole answer (every choice: at once where the backend can, else one after another);
        a failure after routing keeps the headers naming the deployment that failed."""
        responses, headers, failure = await whole_choices(choices, lambda r: self.service.chat(r, ctx))
        if failure is not None:
            return error_response(failure, headers)
        first = choices.first
        if len(responses) > 1:
            body = convert.render_choices(responses, choices, first.model, completion=completion)
        elif completion:
            body = convert.render_completion(responses[0], first.model, first.prompt or "")
        else:
            body = convert.render_chat(responses[0], first.model)
        return json_response(body, headers=headers)

    async def embeddings(self, request: Request) -> Response:
        try:
            ctx = await self._context(request)
            embedding_request, encoding = convert.parse_embeddings(await read_json(request))
            result = await until_disconnect(request, self.service.embed(embedding_request, ctx))
        except GatewayError as exc:
            return error_response(exc)
        usage = {"prompt_tokens": result.usage.prompt_tokens, "total_tokens": result.usage.prompt_tokens}

        def body() -> bytes:
            items = (orjson.dumps({"object": "embedding", "index": index,
                                   "embedding": _base64(vector) if encoding == "base64" else vector})
                     for index, vector in enumerate(result.vectors))
            return object_with_list({"object": "list"}, "data", items,
                                    {"model": embedding_request.model, "usage": usage})

        size = sum(len(vector) for vector in result.vectors)
        return json_bytes_response(await built(size, body))

    async def tokenize(self, request: Request) -> Response:
        """vLLM's and llama.cpp server's ``/tokenize``: exact ids from the model's own tokenizer."""
        try:
            ctx = await self._context(request)
            chat, add_special = convert.parse_tokenize(await read_json(request))
            result = await until_disconnect(request, self.service.tokenize(chat, ctx, add_special=add_special))
        except GatewayError as exc:
            return error_response(exc)
        return json_response({"tokens": result.tokens, "count": len(result.tokens),
                              "max_model_len": result.max_model_len})

    async def detokenize(self, request: Request) -> Response:
        try:
            ctx = await self._context(request)
            model, tokens = convert.parse_detokenize(await read_json(request))
            text = await until_disconnect(request, self.service.detokenize(model, tokens, ctx))
        except GatewayError as exc:
            return error_response(exc)
        return json_response({"prompt": text})

    async def list_models(self, request: Request) -> Response:
        try:
            ctx = await self._context(request)
            entries = await self.service.list_models(ctx)
        except GatewayError as exc:
            return error_response(exc)
        return json_response({"object": "list", "data": [model_body(e) for e in entries]})

    async def retrieve_model(self, request: Request) -> Response:
        try:
            ctx = await self._context(request)
            entry = await self.service.get_model(request.path_params["model_id"], ctx)
        except GatewayError as exc:
            return error_response(exc)
        return json_response(model_body(entry))
