"""The OpenAI-compatible HTTP surface, with and without the ``/v1`` prefix.

Chat completions and completions are generations, served by the one handler
(:mod:`dragoman.serving.handler`) through :meth:`OpenAIDialect.parse`; the rest are plain endpoints.
"""

from __future__ import annotations

import array
import base64
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from dragoman.core.accumulate import ChoicesAccumulator
from dragoman.core.dialect import Generation, GenerationRoute, WireError
from dragoman.core.models import ModelEntry
from dragoman.core.service import CallContext, GatewayService
from dragoman.core.types import ChatResponse
from dragoman.dialects.bulk import built, json_bytes_response, object_with_list
from dragoman.dialects.openai import convert
from dragoman.dialects.openai.stream import ChoicePlan, ChoicesEncoder, ChunkEncoder
from dragoman.errors import GatewayError
from dragoman.protocols.openai import error_body
from dragoman.serving.answers import error_headers, json_response
from dragoman.serving.body import read_json
from dragoman.serving.disconnect import until_disconnect
from dragoman.serving.endpoints import Endpoint, guarded, routes

PREFIXES = ("/v1", "")


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


def render(responses: list[ChatResponse], choices: convert.Choices, *, completion: bool) -> dict[str, Any]:
    """The whole answer: every choice, or the one."""
    first = choices.first
    if len(responses) > 1:
        return convert.render_choices(responses, choices, first.model, completion=completion)
    if completion:
        return convert.render_completion(responses[0], first.model, first.prompt or "")
    return convert.render_chat(responses[0], first.model)


class OpenAIDialect:
    name = "openai"

    def __init__(self, service: GatewayService) -> None:
        self.service = service

    # ------------------------------------------------------------------ generation

    def generation_routes(self) -> Sequence[GenerationRoute]:
        return [GenerationRoute(prefix + path, operation) for prefix in PREFIXES
                for path, operation in (("/chat/completions", "chat"), ("/completions", "completion"))]

    async def parse(self, operation: str, body: Any, headers: Mapping[str, str], ctx: CallContext) -> Generation:
        completion = operation == "completion"
        choices = convert.parse_completion(body) if completion else convert.parse_chat(body)
        first = choices.first

        def whole(responses: list[ChatResponse]) -> dict[str, Any]:
            return render(responses, choices, completion=completion)

        if len(choices.requests) == 1:
            return Generation(choices.requests, lambda: ChunkEncoder(
                first.model, include_usage=first.include_usage, completion=completion,
                prompt_chars=len(first.prompt or "")), whole)
        # Several choices: each prompt's first request asks for all ``n``; the plan skips the rest
        # of a prompt's requests when its stream carried them (an OpenAI-compatible upstream).
        plan = ChoicePlan(choices.n)
        return Generation(choices.requests, lambda: ChoicesEncoder(choices, completion=completion, plan=plan), whole,
                          accumulator=lambda: ChoicesAccumulator(plan.started), needed=plan.needed)

    def render_error(self, error: GatewayError, ctx: CallContext) -> WireError:
        return WireError(error.status, error_body(error))

    # ------------------------------------------------------------- plain endpoints

    def endpoint(self, handler: Any) -> Endpoint:
        return guarded(self.name, self.service, self.render_error, handler)

    def routes(self) -> list[BaseRoute]:
        e = self.endpoint
        return routes([
            ("/embeddings", e(self.embeddings), ["POST"]),
            ("/models", e(self.list_models), ["GET"]),
            ("/models/{model_id:path}", e(self.retrieve_model), ["GET"]),
            ("/tokenize", e(self.tokenize), ["POST"]),
            ("/detokenize", e(self.detokenize), ["POST"]),
        ], PREFIXES)

    async def embeddings(self, request: Request, ctx: CallContext) -> Response:
        embedding_request, encoding = convert.parse_embeddings(await read_json(request))
        result = await until_disconnect(request, self.service.embed(embedding_request, ctx))
        usage = {"prompt_tokens": result.usage.prompt_tokens, "total_tokens": result.usage.prompt_tokens}

        def body() -> bytes:
            items = (orjson.dumps({"object": "embedding", "index": index,
                                   "embedding": _base64(vector) if encoding == "base64" else vector})
                     for index, vector in enumerate(result.vectors))
            return object_with_list({"object": "list"}, "data", items,
                                    {"model": embedding_request.model, "usage": usage})

        size = sum(len(vector) for vector in result.vectors)
        return json_bytes_response(await built(size, body))

    async def tokenize(self, request: Request, ctx: CallContext) -> Response:
        """vLLM's and llama.cpp server's ``/tokenize``: exact ids from the model's own tokenizer."""
        chat, add_special = convert.parse_tokenize(await read_json(request))
        result = await until_disconnect(request, self.service.tokenize(chat, ctx, add_special=add_special))
        return json_response({"tokens": result.tokens, "count": len(result.tokens),
                              "max_model_len": result.max_model_len})

    async def detokenize(self, request: Request, ctx: CallContext) -> Response:
        model, tokens = convert.parse_detokenize(await read_json(request))
        text = await until_disconnect(request, self.service.detokenize(model, tokens, ctx))
        return json_response({"prompt": text})

    async def list_models(self, request: Request, ctx: CallContext) -> Response:
        entries = await self.service.list_models(ctx)
        return json_response({"object": "list", "data": [model_body(e) for e in entries]})

    async def retrieve_model(self, request: Request, ctx: CallContext) -> Response:
        entry = await self.service.get_model(request.path_params["model_id"], ctx)
        return json_response(model_body(entry))
