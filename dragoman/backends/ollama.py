"""Ollama servers (local, remote, or ollama.com with an API key) as a backend.

Chat goes to ``/api/chat`` and raw completions to ``/api/generate`` (``raw: true``), always
streamed: one NDJSON decoder serves streaming and whole answers. Ollama sends tool calls whole
and often without ids, so each gets a fresh ``call_...`` id; outgoing tool results carry
``tool_name`` (the result's own, else the name of the call with that id earlier in the history).

Models come from ``/api/tags`` on every registry refresh (so new ones appear without a restart);
the details of each (capabilities, context length, template) from ``/api/show``, cached per
digest for ``details_ttl`` seconds. Sampling is always sent explicitly in ``options``; the
backend's own ``options`` sit under the request's.
"""

from __future__ import annotations

import asyncio
import fnmatch
import functools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp
import msgspec
import orjson
from pydantic import BaseModel, ConfigDict, Field

from dragoman.backends.base import BackendDeps, CallOptions, ImageFetcher
from dragoman.backends.http import ErrorFields, HTTPBackend, StreamCall, read_error, tracked_end
from dragoman.core.events import Event
from dragoman.core.ids import completion_id, now, tool_call_id
from dragoman.core.images import encode_base64
from dragoman.core.jsonprefix import to_object
from dragoman.core.management import PullProgress
from dragoman.core.models import Capabilities, ModelDetails, ModelInfo
from dragoman.core.parts import PartTracker
from dragoman.core.sse import DEFAULT_MAX_FRAME, NDJSONDecoder
from dragoman.core.types import (
    ChatRequest,
    EmbeddingRequest,
    EmbeddingResponse,
    FinishReason,
    ImagePart,
    Message,
    Reasoning,
    ReasoningPart,
    Role,
    TextPart,
    ToolCallPart,
    ToolResultPart,
    Usage,
)
from dragoman.errors import ErrorKind, GatewayError
from dragoman.protocols import ollama as wire
from dragoman.protocols.ollama import THINK_LEVELS, UPSTREAM_DONE_REASONS

# Options Ollama understands (api/types.go Options + Runner); other request.options keys stay here.
OPTION_NAMES = frozenset({
    "num_keep", "seed", "num_predict", "top_k", "top_p", "min_p", "typical_p", "repeat_last_n",
    "temperature", "repeat_penalty", "presence_penalty", "frequency_penalty", "stop", "num_ctx",
    "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread", "draft_num_predict",
})

SHOW_CONCURRENCY = 4
PULL_IDLE_TIMEOUT = 300.0  # seconds a forwarded pull may go without a progress line


class OllamaSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_url: str = "http://127.0.0.1:11434"
    api_key: str | None = None  # a key (ollama.com), "forward", or None
    models: list[str] = Field(default_factory=lambda: ["*"])
    options: dict[str, Any] = Field(default_factory=dict)  # under the request's (num_ctx ...)
    keep_alive: float | str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    details_ttl: float = Field(60.0, ge=0)  # how long /api/show facts are trusted
    discovery_timeout: float = Field(10.0, gt=0)
    split_think_tags: bool = False  # for old servers that inline <think> in content
    max_connections: int = Field(64, ge=1)
    max_frame_bytes: int = Field(DEFAULT_MAX_FRAME, ge=1024)  # the longest stream line accepted
    capabilities: dict[str, bool] = Field(default_factory=dict)  # overrides for every model


@dataclass(slots=True)
class _Shown:
    digest: str
    at: float
    body: dict[str, Any]


class OllamaBackend(HTTPBackend):
    type = "ollama"
    Settings = OllamaSettings

    def __init__(self, name: str, settings: OllamaSettings, deps: BackendDeps | None = None) -> None:
        super().__init__(name, settings, deps, base_url=settings.base_url.rstrip("/"), api_key=settings.api_key,
                         headers=settings.headers, max_connections=settings.max_connections,
                         max_frame_bytes=settings.max_frame_bytes)
        self.settings = settings
        self.image_fetcher = deps.image_fetcher if deps is not None else None
        self._shown: dict[str, _Shown] = {}
        self._show_gate = asyncio.Semaphore(SHOW_CONCURRENCY)
        self.last_error: str | None = None

    def error_fields(self, body: Any) -> ErrorFields | None:
        """Ollama's ``{"error": "..."}`` (or an OpenAI-style ``{"error": {"message"}}``)."""
        if isinstance(body, dict):
            error = body.get("error")
            if isinstance(error, str):
                return ErrorFields(error)
            if isinstance(error, dict) and isinstance(error.get("message"), str):
                return ErrorFields(str(error["message"]))
        return None

    # ------------------------------------------------------------------ models

    async def list_models(self) -> list[ModelInfo]:
        try:
            tags = await self._call_json("GET", "/api/tags", None)
        except GatewayError as exc:
            self.last_error = exc.message
            raise
        self.last_error = None
        patterns = self.settings.models
        selected = [m for m in tags.get("models") or () if isinstance(m, dict) and _allowed(_tag_name(m), patterns)]
        infos = await asyncio.gather(*(self._info(m) for m in selected))
        listed = {info.name for info in infos}
        for stale in set(self._shown) - listed:
            del self._shown[stale]
        return list(infos)

    async def _info(self, tag: dict[str, Any]) -> ModelInfo:
        name = _tag_name(tag)
        digest = str(tag.get("digest") or "")
        cached = self._shown.get(name)
        show = cached.body if cached else None
        if cached is None or cached.digest != digest or time.monotonic() - cached.at > self.settings.details_ttl:
            try:
                async with self._show_gate:
                    show = await self._call_json("POST", "/api/show", {"model": name})
                self._shown[name] = _Shown(digest, time.monotonic(), show)
            except GatewayError as exc:  # keep what we knew; the next refresh asks again
                self.last_error = f"/api/show {name}: {exc.message}"
        return model_info(name, tag, show or {}, self.settings.capabilities)

    async def _call_json(self, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        timeout = self.settings.discovery_timeout
        try:
            async with asyncio.timeout(timeout):
                payload = await self.request_json(method, path, body=body)
        except TimeoutError as exc:
            raise GatewayError(ErrorKind.TIMEOUT, f"upstream {self.name!r} did not answer {path} "
                                                  f"within {timeout:g}s") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise GatewayError(ErrorKind.UPSTREAM_UNAVAILABLE, f"upstream {self.name!r} is unreachable: {exc}") from exc
        if not isinstance(payload, dict):
            raise GatewayError(ErrorKind.UPSTREAM_ERROR, f"upstream {self.name!r} sent an unexpected {path} body")
        return payload

    async def health(self) -> str | None:
        return self.last_error

    # ------------------------------------------------------- model management

    async def pull_model(self, name: str) -> AsyncIterator[PullProgress]:
        """Forward the pull and relay the upstream's progress lines."""
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.settings.discovery_timeout,
                                        sock_read=PULL_IDLE_TIMEOUT)
        try:
            async with self.session.post(self.base_url + "/api/pull", headers=self.headers(None), timeout=timeout,
                                         data=orjson.dumps({"model": name, "stream": True})) as response:
                if response.status != 200:
                    raise self.status_error(response, await read_error(response, self.error_fields))
                async for raw in response.content:
                    line = orjson.loads(raw) if raw.strip() else None
                    if not isinstance(line, dict):
                        continue
                    if isinstance(line.get("error"), str):
                        raise GatewayError(ErrorKind.UPSTREAM_ERROR, f"upstream {self.name!r}: {line['error']}")
                    yield PullProgress(str(line.get("status", "")), line.get("digest") or None,
                                       line.get("total") or None, line.get("completed") or None)
        except (aiohttp.ClientError, OSError, orjson.JSONDecodeError) as exc:
            raise GatewayError(ErrorKind.UPSTREAM_UNAVAILABLE, f"pulling {name!r} from {self.name!r} failed: {exc}"
                               ) from exc
        except TimeoutError as exc:
            raise GatewayError(ErrorKind.TIMEOUT, f"upstream {self.name!r} sent no pull progress for "
                                                  f"{PULL_IDLE_TIMEOUT:g}s") from exc

    async def delete_model(self, name: str) -> None:
        try:
            async with self.session.delete(self.base_url + "/api/delete", headers=self.headers(None),
                                           data=orjson.dumps({"model": name})) as response:
                if response.status != 200:
                    raise self.status_error(response, await read_error(response, self.error_fields))
        except (aiohttp.ClientError, OSError) as exc:
            raise GatewayError(ErrorKind.UPSTREAM_UNAVAILABLE, f"upstream {self.name!r} is unreachable: {exc}"
                               ) from exc

    def pulled_models(self) -> dict[str, dict[str, str]]:
        return {}  # the Ollama server keeps its own models

    def restore_models(self, pulled: dict[str, dict[str, str]]) -> None:
        return None

    # -------------------------------------------------------------------- chat

    async def chat_call(self, request: ChatRequest, model: str, options: CallOptions) -> StreamCall[bytes]:
        generate = request.prompt is not None
        if generate:
            path, body = "/api/generate", build_generate_body(request, model, self.settings)
        else:
            messages = await wire_messages(request.messages, self.image_fetcher)
            path, body = "/api/chat", build_chat_body(request, model, self.settings, messages)
        tracker = PartTracker(split_think_tags=self.settings.split_think_tags and not generate)
        return StreamCall(path, body, NDJSONDecoder(self.max_frame_bytes),
                          lambda line: self._decode(line, tracker, model),
                          functools.partial(tracked_end, tracker, model, self.name, "line with done: true"))

    def _decode(self, raw: bytes, tracker: PartTracker, model: str) -> list[Event]:
        try:
            line = wire.LINE.decode(raw)
        except msgspec.DecodeError as exc:
            raise GatewayError(ErrorKind.UPSTREAM_ERROR,
                               f"upstream {self.name!r} sent an invalid stream line: {exc}") from exc
        if line.error:
            raise GatewayError(ErrorKind.UPSTREAM_ERROR, str(line.error))
        events: list[Event] = []
        if not tracker.started:
            events += tracker.start(completion_id(), line.model or model, _unix(line.created_at) or now())
        message = line.message
        if message is not None:
            thinking, content, calls = message.thinking, message.content, message.tool_calls
        else:  # /api/generate
            thinking, content, calls = line.thinking, line.response, None
        if thinking:
            events += tracker.reasoning(thinking)
        if content:
            events += tracker.text(content)
        for call in calls or ():
            function = call.function
            if function is None:
                continue
            arguments = function.arguments
            text = arguments if isinstance(arguments, str) else orjson.dumps(arguments or {}).decode()
            # Ollama sends each call whole: a fresh key opens and the next one closes it.
            events += tracker.tool_call(object(), id=call.id or tool_call_id(), name=function.name or "",
                                        arguments=text)
        if line.done:
            tracker.finish(UPSTREAM_DONE_REASONS.get(line.done_reason or "stop", FinishReason.STOP))
            tracker.usage(Usage(prompt_tokens=line.prompt_eval_count or 0, completion_tokens=line.eval_count or 0))
        return events

    # -------------------------------------------------------------- embeddings

    async def embed(self, request: EmbeddingRequest, model: str, options: CallOptions) -> EmbeddingResponse:
        body: dict[str, Any] = {"model": model, "input": request.inputs}
        if request.dimensions is not None:
            body["dimensions"] = request.dimensions
        extra = request.options
        if "truncate" in extra:
            body["truncate"] = bool(extra["truncate"])
        keep_alive = extra.get("keep_alive", self.settings.keep_alive)
        if keep_alive is not None:
            body["keep_alive"] = keep_alive
        opts = {**self.settings.options, **{k: v for k, v in extra.items() if k in OPTION_NAMES}}
        if opts:
            body["options"] = opts
        payload = await self.post_json("/api/embed", body, options)
        vectors = [[float(v) for v in vector] for vector in payload.get("embeddings") or []]
        if len(vectors) != len(request.inputs):
            raise GatewayError(ErrorKind.UPSTREAM_ERROR,
                               f"upstream {self.name!r} returned {len(vectors)} embeddings for "
                               f"{len(request.inputs)} inputs")
        return EmbeddingResponse(model=model, vectors=vectors,
                                 usage=Usage(prompt_tokens=int(payload.get("prompt_eval_count") or 0)))


# ------------------------------------------------------------------------------ model facts


def _tag_name(tag: dict[str, Any]) -> str:
    return str(tag.get("model") or tag.get("name") or "")


def _allowed(name: str, patterns: list[str]) -> bool:
    if not name:
        return False
    bare = name.removesuffix(":latest")
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(bare, p) for p in patterns)


def _unix(value: Any) -> int:
    """Unix seconds of an RFC 3339 time (Ollama writes up to 9 fractional digits); 0 if unreadable."""
    if not isinstance(value, str) or not value:
        return 0
    try:
        return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0


def _length(model_info: dict[str, Any], suffix: str) -> int | None:
    for key, value in model_info.items():
        if key.endswith(suffix) and isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def model_info(name: str, tag: dict[str, Any], show: dict[str, Any], overrides: dict[str, bool]) -> ModelInfo:
    """A model's facts from its ``/api/tags`` entry and ``/api/show`` answer (which may be empty)."""
    raw_details = tag.get("details") or show.get("details") or {}
    families = [str(f) for f in raw_details.get("families") or []]
    family = str(raw_details.get("family") or "")
    modified = _unix(tag.get("modified_at") or show.get("modified_at"))
    info_block = show.get("model_info")
    facts: dict[str, Any] = info_block if isinstance(info_block, dict) else {}
    template = str(show.get("template") or "")
    details = ModelDetails(
        family=family, families=families, parameter_size=str(raw_details.get("parameter_size") or ""),
        quantization_level=str(raw_details.get("quantization_level") or ""),
        format=str(raw_details.get("format") or ""), parent_model=str(raw_details.get("parent_model") or ""),
        size=int(tag.get("size") or 0), digest=str(tag.get("digest") or ""),
        modified_at=float(modified) if modified else None, license=str(show.get("license") or ""),
        template=template, parameters=str(show.get("parameters") or ""),
    )
    listed = show.get("capabilities")
    if isinstance(listed, list):
        names = {str(c) for c in listed}
        completion = "completion" in names
        caps = Capabilities(chat=completion, completion=completion, vision="vision" in names,
                            tools="tools" in names, reasoning="thinking" in names, json_schema=completion,
                            embeddings="embedding" in names)
    else:  # older servers: infer what we can
        embeds = "bert" in family or "embed" in name
        caps = Capabilities(chat=not embeds, completion=not embeds,
                            vision=bool({"clip", "mllama"} & set(families)) or "projector_info" in show,
                            tools=".Tools" in template if template else True, embeddings=embeds)
    for key, value in overrides.items():
        if hasattr(caps, key):
            setattr(caps, key, value)
    return ModelInfo(name=name, capabilities=caps, context_length=_length(facts, ".context_length"),
                     embedding_length=_length(facts, ".embedding_length"), details=details, created=modified,
                     extra=dict(facts))


# ----------------------------------------------------------------------- request bodies


def ollama_options(request: ChatRequest, settings: OllamaSettings) -> dict[str, Any]:
    options = {**settings.options, **{k: v for k, v in request.options.items() if k in OPTION_NAMES}}
    s = request.sampling
    if s.max_tokens is not None:
        options["num_predict"] = s.max_tokens
    for key, value in (("temperature", s.temperature), ("top_p", s.top_p), ("top_k", s.top_k),
                       ("min_p", s.min_p), ("seed", s.seed), ("repeat_penalty", s.repeat_penalty),
                       ("presence_penalty", s.presence_penalty), ("frequency_penalty", s.frequency_penalty),
                       ("typical_p", s.typical_p)):
        if value is not None:
            options[key] = value
    if s.stop:
        options["stop"] = list(s.stop)
    return options


def think_value(reasoning: Reasoning) -> bool | str | None:
    """Reasoning -> ``think``: off -> false, an effort -> its level, on without one -> true."""
    if reasoning.enabled is False or reasoning.effort == "none":
        return False
    effort = reasoning.effort or (reasoning.effective_effort() if reasoning.budget_tokens is not None else None)
    if effort:
        return THINK_LEVELS.get(effort, True)
    return True if reasoning.enabled else None


def _common(body: dict[str, Any], request: ChatRequest, settings: OllamaSettings) -> dict[str, Any]:
    options = ollama_options(request, settings)
    if options:
        body["options"] = options
    fmt = request.response_format
    if fmt is not None and fmt.type != "text":
        body["format"] = "json" if fmt.type == "json_object" else (fmt.schema or {})
    keep_alive = request.options.get("keep_alive", settings.keep_alive)
    if keep_alive is not None:
        body["keep_alive"] = keep_alive
    return body


def build_generate_body(request: ChatRequest, model: str, settings: OllamaSettings) -> dict[str, Any]:
    """A raw completion; with a suffix the model's template must apply (fill-in-the-middle)."""
    body: dict[str, Any] = {"model": model, "prompt": request.prompt or "", "stream": True}
    if request.suffix:
        body["suffix"] = request.suffix
    else:
        body["raw"] = True
    return _common(body, request, settings)


def build_chat_body(request: ChatRequest, model: str, settings: OllamaSettings,
                    messages: list[dict[str, Any]]) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": messages, "stream": True}
    tools = request.tools
    choice = request.tool_choice
    if choice is not None and choice.mode == "none":  # Ollama has no tool_choice: emulate what we can
        tools = []
    elif choice is not None and choice.mode == "tool":
        tools = [t for t in tools if t.name == choice.name]
    if tools:
        body["tools"] = [{"type": "function", "function": {
            k: v for k, v in (("name", t.name), ("description", t.description), ("parameters", t.parameters))
            if v is not None}} for t in tools]
    think = think_value(request.reasoning)
    if think is not None:
        body["think"] = think
    return _common(body, request, settings)


async def _image(part: ImagePart, fetcher: ImageFetcher | None) -> str:
    if part.data is not None:
        return encode_base64(part.data)
    if fetcher is None or not part.url:
        raise GatewayError(ErrorKind.INVALID_REQUEST, "image URLs cannot be fetched for this backend; "
                                                      "send the image as base64 data", param="messages")
    data, _ = await fetcher.fetch(part.url)
    return encode_base64(data)


async def wire_messages(messages: list[Message], fetcher: ImageFetcher | None) -> list[dict[str, Any]]:
    """Canonical messages -> Ollama's: tool results become ``role: tool`` messages with ``tool_name``."""
    names = {p.id: p.name for m in messages for p in m.parts if isinstance(p, ToolCallPart)}
    out: list[dict[str, Any]] = []
    for message in messages:
        if message.role is Role.ASSISTANT:
            out.append(_assistant(message))
        else:
            out += await _turn(message, names, fetcher)
    return out


def _assistant(message: Message) -> dict[str, Any]:
    wire: dict[str, Any] = {"role": "assistant", "content": message.text}
    thinking = "".join(p.text for p in message.parts if isinstance(p, ReasoningPart))
    if thinking:
        wire["thinking"] = thinking
    calls = [p for p in message.parts if isinstance(p, ToolCallPart)]
    if calls:
        wire["tool_calls"] = [{"id": c.id, "function": {"name": c.name, "arguments": to_object(c.arguments)}}
                              for c in calls]
    return wire


async def _tool_result(part: ToolResultPart, names: dict[str, str], fetcher: ImageFetcher | None) -> dict[str, Any]:
    result: dict[str, Any] = {"role": "tool", "content": part.text, "tool_call_id": part.tool_call_id}
    name = part.name or names.get(part.tool_call_id)
    if name:
        result["tool_name"] = name
    images = [await _image(p, fetcher) for p in part.content if isinstance(p, ImagePart)]
    if images:
        result["images"] = images
    return result


async def _turn(message: Message, names: dict[str, str], fetcher: ImageFetcher | None) -> list[dict[str, Any]]:
    """A system, user or tool message: its tool results, then its text and images as one message."""
    out = [await _tool_result(p, names, fetcher) for p in message.parts if isinstance(p, ToolResultPart)]
    texts = [p.text for p in message.parts if isinstance(p, TextPart)]
    images = [await _image(p, fetcher) for p in message.parts if isinstance(p, ImagePart)]
    if texts or images or not out:
        role = "user" if message.role is Role.TOOL else message.role.value
        plain: dict[str, Any] = {"role": role, "content": "".join(texts)}
        if images:
            plain["images"] = images
        out.append(plain)
    return out
