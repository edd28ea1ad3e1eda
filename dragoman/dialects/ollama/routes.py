"""The Ollama HTTP surface (``/api/...``), for Ollama clients (ollama-python, Enchanted, Open WebUI ...).

``/api/ps`` lists the models a backend reports as loaded (``ModelEntry.loaded``); remote
backends report none. Model management (pull, create, copy, delete, blobs) is in ``manage``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from dragoman.core.accumulate import Accumulator
from dragoman.core.management import LoadOptions
from dragoman.core.service import CallContext, ChatStream, GatewayService
from dragoman.core.types import ChatResponse
from dragoman.dialects.bulk import built, json_bytes_response, object_with_list
from dragoman.dialects.common import (
    FrameStreamResponse,
    call_context,
    error_headers,
    json_response,
    read_json,
    until_disconnect,
)
from dragoman.dialects.ollama import convert
from dragoman.dialects.ollama.manage import ModelManagement
from dragoman.dialects.ollama.stream import LineEncoder, Timing, final_body, ndjson_lines
from dragoman.dialects.ollama.wire import OLLAMA_VERSION
from dragoman.errors import ErrorKind, GatewayError

Handler = Callable[[Request], Awaitable[Response]]
NDJSON = "application/x-ndjson"


def error_response(error: GatewayError, headers: dict[str, str] | None = None) -> Response:
    extra = error_headers(error, headers)
    return json_response(convert.error_body(error), status=error.status, headers=extra)


def normalise(vector: list[float]) -> list[float]:
    norm = math.sqrt(math.fsum(v * v for v in vector))
    return [v / norm for v in vector] if norm else vector


async def _accumulate(stream: ChatStream, timing: Timing) -> ChatResponse:
    acc = Accumulator()
    async for event in stream:
        timing.observe(event)
        acc.add(event)
    return acc.result()


class OllamaDialect:
    name = "ollama"

    def __init__(self, service: GatewayService) -> None:
        self.service = service
        self.started = time.time()  # ``modified_at`` for models whose backend gives no date

    def routes(self) -> list[BaseRoute]:
        table: list[tuple[str, Handler, list[str]]] = [
            ("/api/version", self.version, ["GET", "HEAD"]),
            ("/api/tags", self.tags, ["GET", "HEAD"]),
            ("/api/show", self.show, ["POST"]),
            ("/api/ps", self.ps, ["GET"]),
            ("/api/chat", self.chat, ["POST"]),
            ("/api/generate", self.generate, ["POST"]),
            ("/api/embed", self.embed, ["POST"]),
            ("/api/embeddings", self.embeddings, ["POST"]),
        ]
        routes: list[BaseRoute] = [Route(path, handler, methods=methods) for path, handler, methods in table]
        routes += ModelManagement(self.service, self.name).routes()
        return routes

    async def _context(self, request: Request) -> CallContext:
        ctx = call_context(request, self.name)
        await self.service.authenticate(ctx)
        return ctx

    # ----------------------------------------------------------------- models

    async def version(self, request: Request) -> Response:
        return json_response({"version": OLLAMA_VERSION})

    async def tags(self, request: Request) -> Response:
        try:
            ctx = await self._context(request)
            entries = await self.service.list_models(ctx)
        except GatewayError as exc:
            return error_response(exc)
        return json_response({"models": [convert.tag_body(e, self.started) for e in entries]})

    async def ps(self, request: Request) -> Response:
        try:
            ctx = await self._context(request)
            entries = await self.service.list_models(ctx)
        except GatewayError as exc:
            return error_response(exc)
        return json_response({"models": [convert.ps_body(e, time.time()) for e in entries if e.loaded]})

    async def show(self, request: Request) -> Response:
        try:
            ctx = await self._context(request)
            name, verbose = convert.parse_show(await read_json(request))
            try:
                entry = await self.service.get_model(name, ctx)
            except GatewayError as exc:
                if exc.kind is ErrorKind.NOT_FOUND:
                    raise GatewayError(ErrorKind.NOT_FOUND, f"model '{name}' not found", param="model") from exc
                raise
        except GatewayError as exc:
            return error_response(exc)
        return json_response(convert.show_body(entry, verbose=verbose, fallback_time=self.started))

    # ------------------------------------------------------------- generation

    async def chat(self, request: Request) -> Response:
        return await self._generate(request, generate=False)

    async def generate(self, request: Request) -> Response:
        return await self._generate(request, generate=True)

    async def _generate(self, request: Request, *, generate: bool) -> Response:
        try:
            ctx = await self._context(request)
            body = await read_json(request)
            parsed = convert.parse_generate(body) if generate else convert.parse_chat(body)
            chat = parsed.request
            if parsed.load:
                if parsed.unload:
                    await self.service.unload_model(chat.model, ctx)
                else:
                    keep_alive = convert.keep_alive_seconds(chat.options.get("keep_alive"))
                    await self.service.load_model(chat.model, ctx, LoadOptions(keep_alive=keep_alive))
                return json_response(self._load_body(chat.model, "unload" if parsed.unload else "load",
                                                     generate=generate))
            stream = await until_disconnect(request, self.service.chat(chat, ctx))  # a client leaving stops routing
        except GatewayError as exc:
            return error_response(exc)
        timing = Timing(ctx.started_at)
        context = generate and not parsed.raw
        if chat.stream:
            encoder = LineEncoder(chat.model, timing, generate=generate, context=context)
            return FrameStreamResponse(ndjson_lines(stream, encoder), media_type=NDJSON, headers=stream.headers)
        try:
            response = await until_disconnect(request, _accumulate(stream, timing))
        except GatewayError as exc:
            return error_response(exc, stream.headers)
        finally:
            await stream.aclose()
        return json_response(final_body(chat.model, response, timing, generate=generate, context=context),
                             headers=stream.headers)

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

    async def embed(self, request: Request) -> Response:
        try:
            ctx = await self._context(request)
            embedding = convert.parse_embed(await read_json(request))
            if not embedding.inputs:
                await self.service.get_model(embedding.model, ctx)
                return json_response({"model": embedding.model, "embeddings": []})
            result = await until_disconnect(request, self.service.embed(embedding, ctx))
        except GatewayError as exc:
            return error_response(exc)
        total = max(1, int((time.perf_counter() - ctx.started_at) * 1_000_000_000))

        def body() -> bytes:
            return object_with_list({"model": embedding.model}, "embeddings",
                                    (orjson.dumps(normalise(v)) for v in result.vectors),
                                    {"total_duration": total, "load_duration": 0,
                                     "prompt_eval_count": result.usage.prompt_tokens})

        return json_bytes_response(await built(sum(len(v) for v in result.vectors), body))

    async def embeddings(self, request: Request) -> Response:
        try:
            ctx = await self._context(request)
            embedding = convert.parse_embeddings(await read_json(request))
            if not embedding.inputs:
                await self.service.get_model(embedding.model, ctx)
                return json_response({"embedding": []})
            result = await until_disconnect(request, self.service.embed(embedding, ctx))
        except GatewayError as exc:
            return error_response(exc)
        return json_response({"embedding": result.vectors[0] if result.vectors else []})
