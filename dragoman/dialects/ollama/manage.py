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

from dragoman.core.management import ModelRecipe, PullProgress
from dragoman.core.service import CallContext, GatewayService
from dragoman.dialects.ollama import convert, wire
from dragoman.errors import ErrorKind, GatewayError, invalid_request
from dragoman.serving.answers import FrameStreamResponse, json_response
from dragoman.serving.body import read_json
from dragoman.serving.context import call_context

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
        raise invalid_request("request body must be a JSON object")
    name = body.get("model") or body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise invalid_request("model is required", "model")
    stream = body.get("stream", True)
    if not isinstance(stream, bool):
        raise invalid_request("stream must be a boolean", "stream")
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


def parse_create(name: str, body: dict[str, Any]) -> ModelRecipe:
    """``/api/create``'s fields (``from``, ``files``, ``system``, ``template``, ``parameters``,
    ``license``, ``messages``); ``quantize`` and adapters are refused, other fields ignored."""
    for unsupported in ("quantize", "adapters"):
        if body.get(unsupported):
            raise invalid_request(f"{unsupported} is not supported by dragoman", unsupported)
    source = body.get("from")
    if source is not None and (not isinstance(source, str) or not source):
        raise invalid_request("from must be a model name", "from")
    files = body.get("files") or {}
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise invalid_request('files must map file names to "sha256:<hex>" digests', "files")
    for key in ("system", "template"):
        if body.get(key) is not None and not isinstance(body[key], str):
            raise invalid_request(f"{key} must be a string", key)
    license_value = body.get("license")
    if isinstance(license_value, list):
        license_value = "\n".join(str(item) for item in license_value)
    if license_value is not None and not isinstance(license_value, str):
        raise invalid_request("license must be a string or a list of strings", "license")
    parameters = body.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise invalid_request("parameters must be an object", "parameters")
    convert.parse_options({}, parameters)  # types checked as for a request's options
    known = {k: v for k, v in parameters.items() if k in wire.OPTION_TYPES and v is not None}
    messages = []
    for message in body.get("messages") or []:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) \
                or not isinstance(message.get("content"), str):
            raise invalid_request("messages must be objects with a role and a content string", "messages")
        messages.append((message["role"], message["content"]))
    return ModelRecipe(name=name, source=source, files=tuple(files.items()), system=body.get("system"),
                       template=body.get("template"), parameters=tuple(known.items()), license=license_value,
                       messages=tuple(messages))


async def _replay(items: list[PullProgress]) -> AsyncIterator[PullProgress]:
    for item in items:
        yield item


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
            Route("/api/create", self.create, methods=["POST"]),
            Route("/api/copy", self.copy, methods=["POST"]),
            Route("/api/blobs/{digest}", self.blob_exists, methods=["HEAD"]),
            Route("/api/blobs/{digest}", self.upload_blob, methods=["POST"]),
        ]

    async def _context(self, request: Request) -> CallContext:
        ctx = call_context(request.scope, self.dialect)
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

    async def create(self, request: Request) -> Response:
        try:
            ctx = await self._context(request)
            body = await read_json(request)
            name, stream = model_field(body)
            progress = await self.service.create_model(parse_create(name, body), ctx)
        except GatewayError as exc:
            return error_response(exc)
        return await progress_response(_replay(progress), stream=stream)

    async def copy(self, request: Request) -> Response:
        try:
            ctx = await self._context(request)
            body = await read_json(request)
            if not isinstance(body, dict):
                raise invalid_request("request body must be a JSON object")
            source, destination = body.get("source"), body.get("destination")
            if not isinstance(source, str) or not source or not isinstance(destination, str) or not destination:
                raise invalid_request("source and destination are required", "destination")
            await self.service.copy_model(source, destination, ctx)
        except GatewayError as exc:
            if exc.kind is ErrorKind.NOT_FOUND:
                return json_response({"error": f'model "{body.get("source")}" not found'}, status=404)
            return error_response(exc)
        return Response(status_code=200)

    async def blob_exists(self, request: Request) -> Response:
        digest = request.path_params["digest"]
        try:
            ctx = await self._context(request)
            found = await self.service.has_blob(digest, ctx)
        except GatewayError as exc:
            return Response(status_code=exc.status)  # HEAD: no body
        return Response(status_code=200 if found else 404)

    async def upload_blob(self, request: Request) -> Response:
        digest = request.path_params["digest"]
        try:
            ctx = await self._context(request)
            created = await self.service.save_blob(digest, request.stream(), ctx)
        except GatewayError as exc:
            return error_response(exc)
        return Response(status_code=201 if created else 200)

    async def push(self, request: Request) -> Response:
        return json_response({"error": "dragoman cannot push models to a registry: push from the Ollama server "
                                       "or hub that holds them"}, status=501)
