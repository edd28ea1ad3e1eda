"""Ollama's model management (``/api/pull``, ``/api/delete``, ``/api/push`` ...).

Progress endpoints stream NDJSON as Ollama does: an error before the first line is a JSON error
with its status; after it, a final ``{"error": ...}`` line under HTTP 200; ``stream: false``
answers once with the last line (or the error with its status).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from dragoman.core.management import PullProgress
from dragoman.core.service import CallContext, GatewayService
from dragoman.dialects.common import FrameStreamResponse, call_context, json_response, read_json
from dragoman.dialects.ollama import convert
from dragoman.errors import ErrorKind, GatewayError

NDJSON = "application/x-ndjson"


def error_response(error: GatewayError) -> Response:
    return json_response(convert.error_body(error), status=error.status)


def progress_body(progress: PullProgress) -> dict[str, Any]:
    body: dict[str, Any] = {"status": progress.status}
    if progress.digest:
        body["digest"] = progress.digest
    if progress.total:
        body["total"] = progress.total
    if progress.completed:
        body["completed"] = progress.completed
    return body


def model_field(body: Any) -> tuple[str, bool]:
    """``model`` (or the legacy ``name``) and ``stream`` (default true) of a management request."""
    if not isinstance(body, dict):
        raise convert.invalid("request body must be a JSON object")
    name = body.get("model") or body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise convert.invalid("model is required", "model")
    stream = body.get("stream", True)
    if not isinstance(stream, bool):
        raise convert.invalid("stream must be a boolean", "stream")
    return name.strip(), stream


async def progress_lines(progress: AsyncIterator[PullProgress]) -> AsyncIterator[bytes]:
    try:
        async for item in progress:
            yield orjson.dumps(progress_body(item)) + b"\n"
    except GatewayError as exc:
        yield orjson.dumps(convert.error_body(exc)) + b"\n"


async def progress_response(progress: AsyncIterator[PullProgress], *, stream: bool) -> Response:
    if stream:
        return FrameStreamResponse(progress_lines(progress), media_type=NDJSON)
    last: PullProgress | None = None
    try:
        async for item in progress:
            last = item
    except GatewayError as exc:
        return error_response(exc)
    return json_response(progress_body(last or PullProgress("success")))


class ModelManagement:
    """The routes, over the gateway service (which checks the caller may manage models)."""

    def __init__(self, service: GatewayService, dialect: str) -> None:
        self.service = service
        self.dialect = dialect

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/api/pull", self.pull, methods=["POST"]),
            Route("/api/delete", self.delete, methods=["DELETE"]),
            Route("/api/push", self.push, methods=["POST"]),
        ]

    async def _context(self, request: Request) -> CallContext:
        ctx = call_context(request, self.dialect)
        await self.service.authenticate(ctx)
        return ctx

    async def pull(self, request: Request) -> Response:
        try:
            ctx = await self._context(request)
            name, stream = model_field(await read_json(request))
            progress = await self.service.pull_model(name, ctx)
        except GatewayError as exc:
            return error_response(exc)
        return await progress_response(progress, stream=stream)

    async def delete(self, request: Request) -> Response:
        try:
            ctx = await self._context(request)
            name, _ = model_field(await read_json(request))
            await self.service.delete_model(name, ctx)
        except GatewayError as exc:
            if exc.kind is ErrorKind.NOT_FOUND:
                return json_response({"error": exc.message}, status=404)
            return error_response(exc)
        return Response(status_code=200)

    async def push(self, request: Request) -> Response:
        return json_response({"error": "dragoman cannot push models to a registry: push from the Ollama server "
                                       "or hub that holds them"}, status=501)
