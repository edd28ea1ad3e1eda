"""The Ollama HTTP surface (``/api/...``), for Ollama clients (ollama-python, Enchanted, Open WebUI ...).

``/api/ps`` lists the models a backend reports as loaded (``ModelEntry.loaded``); remote
backends report none. Model management (pull, create, copy, delete, blobs) is in ``manage``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from dragoman.core.accumulate import Accumulator
from dragoman.core.dialect import Answer, Generation, GenerationRoute, WireError
from dragoman.core.events import Event
from dragoman.core.management import LoadOptions
from dragoman.core.service import CallContext, GatewayService
from dragoman.dialects.bulk import built, json_bytes_response, object_with_list
from dragoman.dialects.ollama import convert
from dragoman.dialects.ollama.manage import ModelManagement
from dragoman.dialects.ollama.stream import LineEncoder, Timing, final_body
from dragoman.dialects.ollama.wire import OLLAMA_VERSION
from dragoman.errors import ErrorKind, GatewayError
from dragoman.serving.answers import error_headers, json_response
from dragoman.serving.body import read_json
from dragoman.serving.disconnect import until_disconnect
from dragoman.serving.endpoints import Endpoint, guarded, routes

NDJSON = "application/x-ndjson"


def error_response(error: GatewayError, headers: dict[str, str] | None = None) -> Response:
    extra = error_headers(error, headers)
    return json_response(convert.error_body(error), status=error.status, headers=extra)


def normalise(vector: list[float]) -> list[float]:
    norm = math.sqrt(math.fsum(v * v for v in vector))
    return [v / norm for v in vector] if norm else vector


class TimedAccumulator(Accumulator):
    """An accumulator that also marks the answer's timings (Ollama's durations in whole answers)."""

    __slots__ = ("timing",)

    def __init__(self, timing: Timing) -> None:
        super().__init__()
        self.timing = timing

    def add(self, event: Event) -> None:
        self.timing.observe(event)
        super().add(event)


class OllamaDialect:
    name = "ollama"

    def __init__(self, service: GatewayService) -> None:
        self.service = service
        self.started = time.time()  # ``modified_at`` for models whose backend gives no date

    def endpoint(self, handler: Callable[[Request, CallContext], Awaitable[Response]]) -> Endpoint:
        return guarded(self.name, self.service, self.render_error, handler)

    def routes(self) -> list[BaseRoute]:
        e = self.endpoint
        table: list[tuple[str, Endpoint, list[str]]] = [
            ("/api/version", self.version, ["GET", "HEAD"]),
            ("/api/tags", e(self.tags), ["GET", "HEAD"]),
            ("/api/show", e(self.show), ["POST"]),
            ("/api/ps", e(self.ps), ["GET"]),
            ("/api/embed", e(self.embed), ["POST"]),
            ("/api/embeddings", e(self.embeddings), ["POST"]),
        ]
        return routes(table) + ModelManagement(self.service, self.name).routes()

    def render_error(self, error: GatewayError, ctx: CallContext) -> WireError:
        return WireError(error.status, convert.error_body(error))

    # ----------------------------------------------------------------- models

    async def version(self, request: Request) -> Response:
        return json_response({"version": OLLAMA_VERSION})

    async def tags(self, request: Request, ctx: CallContext) -> Response:
        entries = await self.service.list_models(ctx)
        return json_response({"models": [convert.tag_body(e, self.started) for e in entries]})

    async def ps(self, request: Request, ctx: CallContext) -> Response:
        entries = await self.service.list_models(ctx)
        return json_response({"models": [convert.ps_body(e, time.time()) for e in entries if e.loaded]})

    async def show(self, request: Request, ctx: CallContext) -> Response:
        name, verbose = convert.parse_show(await read_json(request))
        try:
            entry = await self.service.get_model(name, ctx)
        except GatewayError as exc:
            if exc.kind is ErrorKind.NOT_FOUND:
                raise GatewayError(ErrorKind.NOT_FOUND, f"model '{name}' not found", param="model") from exc
            raise
        return json_response(convert.show_body(entry, verbose=verbose, fallback_time=self.started))

    # ------------------------------------------------------------- generation

    def generation_routes(self) -> Sequence[GenerationRoute]:
        return [GenerationRoute("/api/chat", "chat"), GenerationRoute("/api/generate", "generate")]

    async def parse(self, operation: str, body: Any, headers: Mapping[str, str],
                    ctx: CallContext) -> Generation | Answer:
        generate = operation == "generate"
        parsed = convert.parse_generate(body) if generate else convert.parse_chat(body)
        chat = parsed.request
        if parsed.load:  # an empty prompt loads (or, with keep_alive 0, unloads) the model
            if parsed.unload:
                await self.service.unload_model(chat.model, ctx)
            else:
                keep_alive = convert.keep_alive_seconds(chat.options.get("keep_alive"))
                await self.service.load_model(chat.model, ctx, LoadOptions(keep_alive=keep_alive))
            return Answer(self._load_body(chat.model, "unload" if parsed.unload else "load", generate=generate))
        timing = Timing(ctx.started_at)
        context = generate and not parsed.raw
        return Generation(
            [chat], lambda: LineEncoder(chat.model, timing, generate=generate, context=context),
            lambda responses: final_body(chat.model, responses[0], timing, generate=generate, context=context),
            media_type=NDJSON, accumulator=lambda: TimedAccumulator(timing))

    @staticmethod
    def _load_body(model: str, reason: str, *, generate: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model, "created_at": convert.timestamp()}
        if generate:
            body["response"] = ""
        else:
            body["message"] = {"role": "assistant", "content": ""}
        body["done_reason"] = reason
        body["done"] = True
        return body

    # ------------------------------------------------------------- embeddings

    async def embed(self, request: Request, ctx: CallContext) -> Response:
        embedding = convert.parse_embed(await read_json(request))
        if not embedding.inputs:
            await self.service.get_model(embedding.model, ctx)
            return json_response({"model": embedding.model, "embeddings": []})
        result = await until_disconnect(request, self.service.embed(embedding, ctx))
        total = max(1, int((time.perf_counter() - ctx.started_at) * 1_000_000_000))

        def body() -> bytes:
            return object_with_list({"model": embedding.model}, "embeddings",
                                    (orjson.dumps(normalise(v)) for v in result.vectors),
                                    {"total_duration": total, "load_duration": 0,
                                     "prompt_eval_count": result.usage.prompt_tokens})

        return json_bytes_response(await built(sum(len(v) for v in result.vectors), body))

    async def embeddings(self, request: Request, ctx: CallContext) -> Response:
        embedding = convert.parse_embeddings(await read_json(request))
        if not embedding.inputs:
            await self.service.get_model(embedding.model, ctx)
            return json_response({"embedding": []})
        result = await until_disconnect(request, self.service.embed(embedding, ctx))
        return json_response({"embedding": result.vectors[0] if result.vectors else []})
