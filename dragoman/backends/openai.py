"""Any OpenAI-compatible upstream: OpenAI, OpenRouter, vLLM, llama.cpp server, LM Studio, Groq...

Chat always streams from the upstream (non-streaming clients get the accumulated stream), so
one decoder serves both. Flat upstream deltas become block events through ``PartTracker``.
"""

from __future__ import annotations

import array
import asyncio
import base64
import fnmatch
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, Literal

import aiohttp
import orjson
from pydantic import BaseModel, ConfigDict, Field

from dragoman.backends.base import Backend, BackendDeps, CallOptions
from dragoman.backends.http import (
    client_timeout,
    exception_error,
    iter_chunks,
    make_session,
    read_json,
    status_error,
)
from dragoman.core.events import Event
from dragoman.core.ids import completion_id, now
from dragoman.core.models import Capabilities, ModelInfo
from dragoman.core.parts import PartTracker
from dragoman.core.sse import SSEDecoder
from dragoman.core.types import (
    ChatRequest,
    EmbeddingRequest,
    EmbeddingResponse,
    FinishReason,
    ImagePart,
    Message,
    ReasoningPart,
    Role,
    TextPart,
    ToolCallPart,
    ToolResultPart,
    Usage,
)
from dragoman.errors import ErrorKind, GatewayError

FINISH_REASONS: dict[str, FinishReason] = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "tool_calls": FinishReason.TOOL_CALLS,
    "function_call": FinishReason.TOOL_CALLS,
    "content_filter": FinishReason.CONTENT_FILTER,
}

# Structured error codes that refine the status table.
ERROR_CODES: dict[str, ErrorKind] = {
    "context_length_exceeded": ErrorKind.CONTEXT_TOO_LONG,
    "model_not_found": ErrorKind.NOT_FOUND,
    "rate_limit_exceeded": ErrorKind.RATE_LIMITED,
    "insufficient_quota": ErrorKind.RATE_LIMITED,
}

DISCOVERY_TTL = 60.0


class OpenAISettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_url: str
    api_key: str | None = None  # a key, "forward", or None
    models: list[str] = Field(default_factory=lambda: ["*"])
    headers: dict[str, str] = Field(default_factory=dict)
    # top_k, min_p and repeat_penalty are not OpenAI parameters; vLLM and llama.cpp accept them.
    extra_sampling: bool = False
    split_think_tags: bool = True
    max_connections: int = 256
    capabilities: dict[str, bool] = Field(default_factory=dict)  # overrides for every model
    context_length: int | None = None
    reasoning_field: Literal["reasoning_content", "reasoning"] = "reasoning_content"


class OpenAIBackend(Backend):
    type = "openai"

    def __init__(self, name: str, settings: OpenAISettings) -> None:
        super().__init__(name)
        self.settings = settings
        self.base_url = settings.base_url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None
        self._discovered: list[str] | None = None
        self._discovered_at = 0.0
        self._discovery_lock = asyncio.Lock()
        self.last_error: str | None = None

    @classmethod
    def from_config(cls, name: str, settings: Mapping[str, Any], deps: BackendDeps) -> OpenAIBackend:
        return cls(name, OpenAISettings.model_validate(settings))

    async def start(self) -> None:
        self._session = make_session(limit=self.settings.max_connections)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = make_session(limit=self.settings.max_connections)
        return self._session

    # ------------------------------------------------------------------ models

    def _headers(self, options: CallOptions | None) -> dict[str, str]:
        headers = {"Content-Type": "application/json", **self.settings.headers}
        key = self.settings.api_key
        if key == "forward":
            key = options.client_api_key if options else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    async def list_models(self) -> list[ModelInfo]:
        names = await self._model_names()
        # Unknown upstream abilities are assumed present: the upstream itself refuses what it cannot do.
        caps = Capabilities(**{"vision": True, "reasoning": True, **self.settings.capabilities})
        return [ModelInfo(name=n, capabilities=caps, context_length=self.settings.context_length)
                for n in names]

    async def _model_names(self) -> list[str]:
        patterns = self.settings.models
        explicit = [p for p in patterns if not any(c in p for c in "*?[")]
        if len(explicit) == len(patterns):
            return explicit
        if self._discovered is None or time.monotonic() - self._discovered_at > DISCOVERY_TTL:
            async with self._discovery_lock:
                if self._discovered is None or time.monotonic() - self._discovered_at > DISCOVERY_TTL:
                    await self._discover()
        found = [m for m in self._discovered or [] if any(fnmatch.fnmatchcase(m, p) for p in patterns)]
        return list(dict.fromkeys(explicit + found))

    async def _discover(self) -> None:
        try:
            async with asyncio.timeout(10):
                async with self.session.get(f"{self.base_url}/models", headers=self._headers(None)) as resp:
                    if resp.status != 200:
                        raise status_error(self.name, resp.status, await _error_message(resp))
                    body = await read_json(resp, self.name)
            self._discovered = [str(m["id"]) for m in body.get("data", []) if isinstance(m, dict) and "id" in m]
            self.last_error = None
        except (aiohttp.ClientError, TimeoutError, GatewayError, OSError) as exc:
            self.last_error = str(exc) or type(exc).__name__
            self._discovered = self._discovered or []
        self._discovered_at = time.monotonic()

    async def health(self) -> str | None:
        await self._model_names()
        return self.last_error

    # -------------------------------------------------------------------- chat

    async def stream(self, request: ChatRequest, model: str, options: CallOptions) -> AsyncIterator[Event]:
        completion = request.prompt is not None
        path = "/completions" if completion else "/chat/completions"
        if completion:
            body = build_completion_body(request, model)
        else:
            body = build_chat_body(request, model, self.settings)
        timeouts = options.timeouts
        tracker = PartTracker(split_think_tags=self.settings.split_think_tags and not completion)
        if not request.stream:
            # A whole answer for a client that wants one: one JSON body instead of dozens of frames.
            body["stream"] = False
            body.pop("stream_options", None)
            for event in await self._whole(path, body, options, tracker, model, completion):
                yield event
            return
        response = await self._post(path, body, options)
        try:
            decoder = SSEDecoder()
            async for chunk in iter_chunks(response, timeouts.idle, self.name):
                for sse in decoder.feed(chunk):
                    for event in self._decode(sse.data, tracker, model):
                        yield event
            for sse in decoder.flush():
                for event in self._decode(sse.data, tracker, model):
                    yield event
            if not tracker.started:
                for event in tracker.start(completion_id(), model, now()):
                    yield event
            for event in tracker.end():
                yield event
        except (aiohttp.ClientError, OSError) as exc:
            raise exception_error(self.name, exc, timeouts) from exc
        finally:
            response.release()
            response.close()

    async def _whole(self, path: str, body: dict[str, Any], options: CallOptions, tracker: PartTracker,
                     model: str, completion: bool) -> list[Event]:
        """A non-streamed upstream answer as the same events its stream would have given."""
        response = await self._post(path, body, options)
        try:
            async with asyncio.timeout(options.timeouts.idle):
                payload = await read_json(response, self.name)
        except TimeoutError as exc:
            raise GatewayError(ErrorKind.TIMEOUT, f"upstream {self.name!r} stalled mid-answer") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise exception_error(self.name, exc, options.timeouts) from exc
        finally:
            response.release()
        if not isinstance(payload, dict) or not isinstance(payload.get("choices"), list):
            raise GatewayError(ErrorKind.UPSTREAM_ERROR, f"upstream {self.name!r} sent an answer without choices")
        events = tracker.start(str(payload.get("id") or completion_id()), str(payload.get("model") or model),
                               int(payload.get("created") or now()))
        choice: dict[str, Any] = next((c for c in payload["choices"] if c.get("index", 0) == 0), {})
        if completion:
            events += tracker.text(choice.get("text") or "")
        else:
            message = choice.get("message") or {}
            reasoning = message.get("reasoning_content") or message.get("reasoning")
            if isinstance(reasoning, str):
                events += tracker.reasoning(reasoning)
            if isinstance(message.get("content"), str):
                events += tracker.text(message["content"])
            for index, call in enumerate(message.get("tool_calls") or ()):
                function = call.get("function") or {}
                arguments = function.get("arguments")
                if not isinstance(arguments, str):
                    arguments = orjson.dumps(arguments if arguments is not None else {}).decode()
                events += tracker.tool_call(index, id=call.get("id"), name=function.get("name"), arguments=arguments)
        reason = choice.get("finish_reason")
        tracker.finish(FINISH_REASONS.get(reason, FinishReason.STOP) if reason else None)
        if isinstance(payload.get("usage"), dict):
            tracker.usage(_usage(payload["usage"]))
        return events + tracker.end()

    async def _post(self, path: str, body: dict[str, Any], options: CallOptions) -> aiohttp.ClientResponse:
        """POST and wait for a good status and headers within the first-byte timeout."""
        timeouts = options.timeouts
        try:
            async with asyncio.timeout(timeouts.first_byte):
                response = await self.session.post(
                    self.base_url + path, data=orjson.dumps(body), headers=self._headers(options),
                    timeout=client_timeout(timeouts),
                )
                if response.status != 200:
                    try:
                        message, code, param = await _error_fields(response)
                    finally:
                        response.release()
                    raise status_error(self.name, response.status, message, headers=response.headers,
                                       code=code, kind=ERROR_CODES.get(code or ""), param=param)
                return response
        except TimeoutError as exc:
            raise GatewayError(ErrorKind.TIMEOUT,
                               f"upstream {self.name!r} sent no answer within {timeouts.first_byte:g}s") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise exception_error(self.name, exc, timeouts) from exc

    def _decode(self, data: str, tracker: PartTracker, model: str) -> list[Event]:
        if data == "[DONE]" or not data:
            return []
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise GatewayError(ErrorKind.UPSTREAM_ERROR,
                               f"upstream {self.name!r} sent an invalid stream chunk") from exc
        if not isinstance(chunk, dict):
            return []
        if chunk.get("error"):
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else str(error)
            raise GatewayError(ErrorKind.UPSTREAM_ERROR, message or f"upstream {self.name!r} failed mid-stream")
        events: list[Event] = []
        if not tracker.started:
            events += tracker.start(str(chunk.get("id") or completion_id()), str(chunk.get("model") or model),
                                    int(chunk.get("created") or now()))
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            tracker.usage(_usage(usage))
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue  # n > 1 is refused at planning; ignore stray choices
            if "text" in choice:  # legacy completions
                events += tracker.text(choice.get("text") or "")
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                events += tracker.reasoning(reasoning)
            content = delta.get("content")
            if isinstance(content, str) and content:
                events += tracker.text(content)
            for call in delta.get("tool_calls") or ():
                function = call.get("function") or {}
                events += tracker.tool_call(
                    call.get("index", 0), id=call.get("id"), name=function.get("name"),
                    arguments=function.get("arguments") or "",
                )
            reason = choice.get("finish_reason")
            if reason:
                tracker.finish(FINISH_REASONS.get(reason, FinishReason.STOP))
        return events

    # -------------------------------------------------------------- embeddings

    async def embed(self, request: EmbeddingRequest, model: str, options: CallOptions) -> EmbeddingResponse:
        body: dict[str, Any] = {"model": model, "input": request.inputs, "encoding_format": "base64"}
        if request.dimensions is not None:
            body["dimensions"] = request.dimensions
        response = await self._post("/embeddings", body, options)
        try:
            async with asyncio.timeout(options.timeouts.idle):
                payload = await read_json(response, self.name)
        except TimeoutError as exc:
            raise GatewayError(ErrorKind.TIMEOUT, f"upstream {self.name!r} stalled") from exc
        finally:
            response.release()
        data = sorted(payload.get("data") or [], key=lambda d: d.get("index", 0))
        vectors = [_decode_vector(d.get("embedding")) for d in data]
        usage = payload.get("usage") or {}
        return EmbeddingResponse(model=model, vectors=vectors,
                                 usage=Usage(prompt_tokens=int(usage.get("prompt_tokens") or 0)))


# ----------------------------------------------------------------------- request bodies


def build_chat_body(request: ChatRequest, model: str, settings: OpenAISettings) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [m for message in request.messages for m in _wire_messages(message)],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    s = request.sampling
    if s.max_tokens is not None:
        body["max_tokens"] = s.max_tokens
    for key, value in (("temperature", s.temperature), ("top_p", s.top_p), ("seed", s.seed),
                       ("presence_penalty", s.presence_penalty), ("frequency_penalty", s.frequency_penalty)):
        if value is not None:
            body[key] = value
    if settings.extra_sampling:
        for key, value in (("top_k", s.top_k), ("min_p", s.min_p), ("repetition_penalty", s.repeat_penalty)):
            if value is not None:
                body[key] = value
    if s.stop:
        body["stop"] = s.stop
    if request.tools:
        body["tools"] = [
            {"type": "function", "function": {
                k: v for k, v in (("name", t.name), ("description", t.description),
                                  ("parameters", t.parameters), ("strict", t.strict)) if v is not None}}
            for t in request.tools
        ]
    if request.tool_choice is not None:
        choice = request.tool_choice
        body["tool_choice"] = (
            {"type": "function", "function": {"name": choice.name}} if choice.mode == "tool" else choice.mode
        )
        if not choice.parallel:
            body["parallel_tool_calls"] = False
    fmt = request.response_format
    if fmt is not None and fmt.type != "text":
        if fmt.type == "json_object":
            body["response_format"] = {"type": "json_object"}
        else:
            schema: dict[str, Any] = {"name": fmt.name or "response", "schema": fmt.schema or {}}
            if fmt.strict is not None:
                schema["strict"] = fmt.strict
            body["response_format"] = {"type": "json_schema", "json_schema": schema}
    effort = request.reasoning.effective_effort()
    if effort is not None:
        body["reasoning_effort"] = effort
    if request.user:
        body["user"] = request.user
    return body


def build_completion_body(request: ChatRequest, model: str) -> dict[str, Any]:
    s = request.sampling
    body: dict[str, Any] = {"model": model, "prompt": request.prompt or "", "stream": True,
                            "stream_options": {"include_usage": True}}
    for key, value in (("max_tokens", s.max_tokens), ("temperature", s.temperature), ("top_p", s.top_p),
                       ("seed", s.seed), ("presence_penalty", s.presence_penalty),
                       ("frequency_penalty", s.frequency_penalty), ("suffix", request.suffix)):
        if value is not None:
            body[key] = value
    if s.stop:
        body["stop"] = s.stop
    return body


def _image_url(part: ImagePart) -> dict[str, Any]:
    if part.data is not None:
        url = f"data:{part.media_type or 'image/png'};base64,{base64.b64encode(part.data).decode()}"
    else:
        url = part.url or ""
    image: dict[str, Any] = {"url": url}
    if part.detail:
        image["detail"] = part.detail
    return {"type": "image_url", "image_url": image}


def _content(parts: list[TextPart | ImagePart]) -> str | list[dict[str, Any]]:
    if all(isinstance(p, TextPart) for p in parts):
        return "".join(p.text for p in parts if isinstance(p, TextPart))
    return [{"type": "text", "text": p.text} if isinstance(p, TextPart) else _image_url(p) for p in parts]


def _wire_messages(message: Message) -> list[dict[str, Any]]:
    """One canonical message may become several OpenAI messages (tool results are their own)."""
    out: list[dict[str, Any]] = []
    if message.role is Role.ASSISTANT:
        wire: dict[str, Any] = {"role": "assistant"}
        text = "".join(p.text for p in message.parts if isinstance(p, TextPart))
        calls = [p for p in message.parts if isinstance(p, ToolCallPart)]
        wire["content"] = text if text or not calls else None
        if calls:
            wire["tool_calls"] = [{"id": c.id, "type": "function",
                                   "function": {"name": c.name, "arguments": c.arguments or "{}"}} for c in calls]
        out.append(wire)
        return out
    plain: list[TextPart | ImagePart] = []
    for part in message.parts:
        if isinstance(part, ToolResultPart):
            out.append({"role": "tool", "tool_call_id": part.tool_call_id, "content": _content(part.content)
                        if any(isinstance(p, ImagePart) for p in part.content) else part.text})
        elif isinstance(part, (TextPart, ImagePart)):
            plain.append(part)
        elif isinstance(part, ReasoningPart):
            continue  # upstream chat APIs do not take reasoning back
    if plain or not out:
        role = "user" if message.role is Role.TOOL else message.role.value
        wire = {"role": role, "content": _content(plain)}
        if message.name:
            wire["name"] = message.name
        out.append(wire)
    return out


def _usage(raw: dict[str, Any]) -> Usage:
    details = raw.get("completion_tokens_details") or {}
    prompt_details = raw.get("prompt_tokens_details") or {}
    return Usage(
        prompt_tokens=int(raw.get("prompt_tokens") or 0),
        completion_tokens=int(raw.get("completion_tokens") or 0),
        reasoning_tokens=int(details.get("reasoning_tokens") or 0) if isinstance(details, dict) else 0,
        cached_tokens=int(prompt_details.get("cached_tokens") or 0) if isinstance(prompt_details, dict) else 0,
    )


def _decode_vector(raw: Any) -> list[float]:
    if isinstance(raw, str):
        values = array.array("f")
        values.frombytes(base64.b64decode(raw))
        return values.tolist()
    if isinstance(raw, list):
        return [float(v) for v in raw]
    raise GatewayError(ErrorKind.UPSTREAM_ERROR, "upstream sent an embedding in an unknown encoding")


async def _error_fields(response: aiohttp.ClientResponse) -> tuple[str, str | None, str | None]:
    """(message, code, param) from an OpenAI-shaped error body, or the raw text."""
    raw = await response.read()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", errors="replace").strip()[:2000], None, None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code = error.get("code")
        param = error.get("param")
        return str(error.get("message") or ""), str(code) if code else None, str(param) if param else None
    if isinstance(error, str):
        return error, None, None
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        return body["detail"], None, None
    return raw.decode("utf-8", errors="replace")[:2000], None, None


async def _error_message(response: aiohttp.ClientResponse) -> str:
    return (await _error_fields(response))[0]

