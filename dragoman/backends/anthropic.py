"""Anthropic's Messages API as a backend, so every client dialect can reach Claude models.

Chat always streams from the upstream (non-streaming clients get the accumulated stream).
Anthropic's named SSE events are already block-structured, so they map straight onto
canonical events: no :class:`PartTracker` needed. Decisions worth knowing:

* ``system`` messages are lifted into ``system``; tool results (``Role.TOOL``) join the user
  turn after the assistant's tool use as ``tool_result`` blocks (first in the turn, as the API
  requires); consecutive turns of one role are merged.
* ``max_tokens`` is required upstream: the client's, else ``default_max_tokens``.
* ``temperature`` is clamped to Anthropic's 0..1. With thinking on, Anthropic accepts only
  ``temperature`` 1 and ``top_p`` >= 0.95 and no ``top_k``: other values are left out.
* Reasoning (``reasoning_effort``, ``think``, ``thinking``) becomes ``thinking`` with
  ``Reasoning.effective_budget()`` tokens, at least 1024; when ``max_tokens`` does not exceed
  the budget, the budget is added to it (``max_tokens`` then still bounds the answer after the
  thinking, which is what an OpenAI or Ollama client meant by it).
* Thinking blocks go back upstream byte-exact with their signatures; reasoning without a
  signature (from another model, or through Ollama's wire, which has no field for one) cannot
  be verified by Anthropic and is left out. When the last assistant turn then calls tools
  without a thinking block first, thinking is not requested for this turn (Anthropic would
  refuse the request).
* ``json_object`` has no Anthropic equivalent and is not sent; ``json_schema`` becomes
  ``output_config.format``.
* What an Anthropic client sent that needs no translation (``extensions["anthropic"]``, typed
  in :mod:`dragoman.protocols.anthropic`) goes on as sent, so a same-protocol hop loses nothing:
  prompt-caching marks on the same blocks and tools; top-level fields dragoman does not model
  (``context_management``, ``cache_control``, ``service_tier`` ...); its ``thinking`` when the canonical setting still
  says the same (a budget-less mode such as ``adaptive``, which would otherwise become a budget;
  newer keys such as ``display``); its ``output_config`` (``effort`` follows the canonical effort
  if an override changed it); and its ``anthropic-beta`` header, after the configured ``beta``.
* An effort without ``enabled`` (an Anthropic client's ``output_config.effort`` alone) does not
  turn thinking on.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import aiohttp
import msgspec
import orjson
from pydantic import BaseModel, ConfigDict, Field

from dragoman.backends.base import BackendDeps, CallOptions
from dragoman.backends.http import ErrorFields, HTTPBackend, ModelDiscovery, StreamCall
from dragoman.core.events import Event, MessageEnd, MessageStart, PartDelta, PartEnd, PartKind, PartStart
from dragoman.core.ids import now, random_id
from dragoman.core.images import encode_base64, sniff_media_type
from dragoman.core.jsonprefix import to_object
from dragoman.core.models import Capabilities, ModelInfo
from dragoman.core.sse import DEFAULT_MAX_FRAME, ServerSentEvent, SSEDecoder
from dragoman.core.types import (
    ChatRequest,
    FinishReason,
    ImagePart,
    Message,
    Part,
    ReasoningPart,
    Role,
    Sampling,
    TextPart,
    Tool,
    ToolCallPart,
    ToolChoice,
    ToolResultPart,
    Usage,
)
from dragoman.errors import ErrorKind, GatewayError
from dragoman.protocols import anthropic as wire
from dragoman.protocols.anthropic import (
    BETA_HEADER,
    ERROR_KINDS,
    ERROR_TYPE_STATUS,
    OUTPUT_EFFORTS,
    UPSTREAM_STOP_REASONS,
    message_extension,
    request_extension,
)

DEFAULT_BASE_URL = "https://api.anthropic.com"
DEFAULT_VERSION = "2023-06-01"
MIN_THINKING_BUDGET = 1024
DISCOVERY_TTL = 60.0


class AnthropicSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_url: str = DEFAULT_BASE_URL
    api_key: str | None = None  # a key, "forward" (the client's own), or None
    auth: Literal["x-api-key", "bearer"] = "x-api-key"  # bearer for OAuth tokens and some proxies
    models: list[str] = Field(default_factory=lambda: ["*"])  # names or globs (globs are discovered)
    default_max_tokens: int = Field(4096, ge=1)
    version: str = DEFAULT_VERSION
    beta: list[str] = Field(default_factory=list)
    headers: dict[str, str] = Field(default_factory=dict)
    max_connections: int = 256
    max_frame_bytes: int = Field(DEFAULT_MAX_FRAME, ge=1024)  # the longest stream line accepted
    capabilities: dict[str, bool] = Field(default_factory=dict)  # overrides for every model
    context_length: int | None = 200_000


class AnthropicBackend(HTTPBackend):
    type = "anthropic"
    Settings = AnthropicSettings

    def __init__(self, name: str, settings: AnthropicSettings, deps: BackendDeps | None = None) -> None:
        fixed = {"anthropic-version": settings.version, **settings.headers}
        if settings.beta:
            fixed[BETA_HEADER] = ",".join(settings.beta)
        super().__init__(name, settings, deps, base_url=settings.base_url.rstrip("/").removesuffix("/v1"),
                         api_key=settings.api_key, headers=fixed, max_connections=settings.max_connections,
                         auth=settings.auth, max_frame_bytes=settings.max_frame_bytes)
        self.settings = settings
        self.discovery = ModelDiscovery(self._discover, ttl=DISCOVERY_TTL)

    def error_fields(self, body: Any) -> ErrorFields | None:
        """``{"type":"error","error":{"type","message"}}``: the error type refines the status table."""
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            kind_name = str(error.get("type") or "") or None
            return ErrorFields(str(error.get("message") or ""), kind_name, ERROR_KINDS.get(kind_name or ""))
        return None

    # ------------------------------------------------------------------ models

    async def list_models(self) -> list[ModelInfo]:
        caps = Capabilities(**{"vision": True, "tools": True, "reasoning": True, "json_schema": True,
                               "completion": False, **self.settings.capabilities})
        created = await self.discovery.select(self.settings.models)
        return [ModelInfo(name=n, capabilities=caps, context_length=self.settings.context_length, created=c)
                for n, c in created.items()]

    async def _discover(self) -> dict[str, int]:
        """``GET /v1/models``, every page."""
        found: dict[str, int] = {}
        params = {"limit": "1000"}
        while True:
            body = await self.request_json("GET", "/v1/models", params=params)
            for item in body.get("data") or []:
                if isinstance(item, dict) and "id" in item:
                    found[str(item["id"])] = _unix(item.get("created_at"))
            if not body.get("has_more") or not body.get("last_id"):
                return found
            params = {"limit": "1000", "after_id": str(body["last_id"])}

    async def health(self) -> str | None:
        await self.discovery.select(self.settings.models)
        return self.discovery.last_error

    async def probe(self) -> str | None:
        return await self.discovery.probe()

    async def count_tokens(self, request: ChatRequest, model: str) -> int | None:
        """Anthropic's own count (``/v1/messages/count_tokens``); None (an estimate) when it fails."""
        if self.settings.api_key == "forward":
            return None  # the client's key is not at hand here
        body = build_body(request, model, self.settings)
        for key in ("max_tokens", "stream", "stop_sequences", "temperature", "top_p", "top_k", "metadata"):
            body.pop(key, None)
        try:
            async with asyncio.timeout(10):
                payload = await self.request_json("POST", "/v1/messages/count_tokens", body=body,
                                                  headers=beta_headers(request, self.settings))
        except (aiohttp.ClientError, TimeoutError, GatewayError, OSError):
            return None
        tokens = payload.get("input_tokens") if isinstance(payload, dict) else None
        return tokens if isinstance(tokens, int) else None

    # -------------------------------------------------------------------- chat

    async def chat_call(self, request: ChatRequest, model: str, options: CallOptions) -> StreamCall[ServerSentEvent]:
        if request.prompt is not None:
            raise GatewayError(ErrorKind.INVALID_REQUEST,
                               f"backend {self.name!r} (Anthropic) serves chat only, not raw text completion",
                               param="model")
        decoder = StreamDecoder(self.name, model, SSEDecoder(self.max_frame_bytes))
        return StreamCall("/v1/messages", build_body(request, model, self.settings), decoder.sse, decoder.decode,
                          decoder.end_of_stream, headers=beta_headers(request, self.settings))


# ----------------------------------------------------------------------- stream decoding


@dataclass(slots=True)
class _Block:
    index: int  # canonical index
    kind: PartKind
    signature: str | None = None


@dataclass(slots=True)
class StreamDecoder:
    """Anthropic's named SSE events -> canonical events (pure: unit-testable on recorded streams)."""

    backend: str
    model: str
    sse: SSEDecoder = field(default_factory=SSEDecoder)
    started: bool = False
    ended: bool = False
    blocks: dict[int, _Block] = field(default_factory=dict)  # upstream index -> block
    next_index: int = 0
    finish_reason: FinishReason | None = None
    stop_sequence: str | None = None
    input_tokens: int = 0
    cache_creation: int = 0
    cache_read: int = 0
    output_tokens: int = 0

    def decode(self, sse: ServerSentEvent) -> list[Event]:
        if not sse.data or sse.event == "ping":
            return []
        try:
            event = wire.STREAM_EVENT.decode(sse.data)
        except msgspec.DecodeError as exc:
            raise GatewayError(ErrorKind.UPSTREAM_ERROR,
                               f"upstream {self.backend!r} sent an invalid stream event: {exc}") from exc
        kind = sse.event or event.type
        if kind == "error" or event.type == "error":
            raise _stream_error(self.backend, event.error)
        handler = _HANDLERS.get(str(kind))
        return handler(self, event) if handler is not None else []

    def _message_start(self, event: wire.StreamEvent) -> list[Event]:
        message = event.message or wire.MessageInfo()
        self._usage(message.usage)
        self.started = True
        return [MessageStart(id=message.id or random_id("msg_"), model=message.model or self.model, created=now(),
                             prompt_tokens=self.input_tokens + self.cache_creation + self.cache_read)]

    def _block_start(self, event: wire.StreamEvent) -> list[Event]:
        block = event.content_block or wire.ContentBlock()
        upstream = event.index if event.index is not None else len(self.blocks)
        index = self.next_index
        events: list[Event]
        if block.type == "text":
            events = [PartStart(index, "text")]
            if block.text:
                events.append(PartDelta(index, block.text))
            self.blocks[upstream] = _Block(index, "text")
        elif block.type == "thinking":
            events = [PartStart(index, "reasoning")]
            if block.thinking:
                events.append(PartDelta(index, block.thinking))
            self.blocks[upstream] = _Block(index, "reasoning", signature=block.signature or None)
        elif block.type == "redacted_thinking":
            events = [PartStart(index, "reasoning", redacted=block.data or "")]
            self.blocks[upstream] = _Block(index, "reasoning")
        elif block.type == "tool_use":
            events = [PartStart(index, "tool_call", tool_call_id=block.id or random_id("toolu_"),
                                tool_name=block.name or "")]
            if block.input:
                events.append(PartDelta(index, orjson.dumps(block.input).decode()))
            self.blocks[upstream] = _Block(index, "tool_call")
        else:
            return []  # server-tool blocks and the like: not requested, not modelled
        self.next_index += 1
        return events

    def _block_delta(self, event: wire.StreamEvent) -> list[Event]:
        block = self.blocks.get(event.index if event.index is not None else -1)
        delta = event.delta
        if block is None or delta is None:
            return []
        text = None
        if delta.type == "text_delta":
            text = delta.text
        elif delta.type == "thinking_delta":
            text = delta.thinking
        elif delta.type == "input_json_delta":
            text = delta.partial_json
        elif delta.type == "signature_delta":
            block.signature = delta.signature or None
        return [PartDelta(block.index, text)] if text else []

    def _block_stop(self, event: wire.StreamEvent) -> list[Event]:
        block = self.blocks.get(event.index if event.index is not None else -1)
        if block is None:
            return []
        return [PartEnd(block.index, signature=block.signature if block.kind == "reasoning" else None)]

    def _message_delta(self, event: wire.StreamEvent) -> list[Event]:
        delta = event.delta
        if delta is not None and delta.stop_reason:
            self.finish_reason = UPSTREAM_STOP_REASONS.get(delta.stop_reason, FinishReason.STOP)
            self.stop_sequence = delta.stop_sequence
        self._usage(event.usage)
        return []

    def _message_stop(self, event: wire.StreamEvent) -> list[Event]:
        return self._end()

    def _usage(self, usage: wire.Usage | None) -> None:
        if usage is None:
            return
        if usage.input_tokens is not None:
            self.input_tokens = usage.input_tokens
        if usage.output_tokens is not None:
            self.output_tokens = usage.output_tokens
        if usage.cache_creation_input_tokens is not None:
            self.cache_creation = usage.cache_creation_input_tokens
        if usage.cache_read_input_tokens is not None:
            self.cache_read = usage.cache_read_input_tokens

    def _end(self) -> list[Event]:
        if self.ended:
            return []
        self.ended = True
        usage = Usage(prompt_tokens=self.input_tokens + self.cache_creation + self.cache_read,
                      completion_tokens=self.output_tokens, cached_tokens=self.cache_read)
        return [MessageEnd(self.finish_reason or FinishReason.STOP, usage, self.stop_sequence)]

    def end_of_stream(self) -> list[Event]:
        """At upstream EOF: the answer is complete only once ``message_stop`` came."""
        if self.ended:
            return []
        raise GatewayError(ErrorKind.UPSTREAM_ERROR,
                           f"upstream {self.backend!r} closed the stream before the message ended (no message_stop)")


_HANDLERS = {
    "message_start": StreamDecoder._message_start,
    "content_block_start": StreamDecoder._block_start,
    "content_block_delta": StreamDecoder._block_delta,
    "content_block_stop": StreamDecoder._block_stop,
    "message_delta": StreamDecoder._message_delta,
    "message_stop": StreamDecoder._message_stop,
}


def _stream_error(backend: str, error: Any) -> GatewayError:
    error = error if isinstance(error, dict) else {}
    kind_name = str(error.get("type") or "api_error")
    message = str(error.get("message") or f"upstream {backend!r} failed mid-stream")
    return GatewayError(ERROR_KINDS.get(kind_name, ErrorKind.UPSTREAM_ERROR), message,
                        upstream_status=ERROR_TYPE_STATUS.get(kind_name), code=kind_name)


def _unix(value: Any) -> int:
    if not isinstance(value, str):
        return 0
    try:
        return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0


# ----------------------------------------------------------------------- request bodies


def beta_headers(request: ChatRequest, settings: AnthropicSettings) -> dict[str, str]:
    """An Anthropic client's ``anthropic-beta`` header: as sent, or after the configured betas."""
    sent = request_extension(request).beta
    if not sent:
        return {}
    if not settings.beta:
        return {BETA_HEADER: sent}
    names = [*settings.beta, *(name.strip() for name in sent.split(","))]
    return {BETA_HEADER: ",".join(dict.fromkeys(name for name in names if name))}


def build_body(request: ChatRequest, model: str, settings: AnthropicSettings) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "max_tokens": request.sampling.max_tokens or settings.default_max_tokens}
    system = [_marked({"type": "text", "text": p.text}, m, i) for m in request.messages if m.role is Role.SYSTEM
              for i, p in enumerate(m.parts) if isinstance(p, TextPart) and p.text]
    if system:
        body["system"] = system[0]["text"] if len(system) == 1 and "cache_control" not in system[0] else system
    body["messages"] = wire_messages(request.messages)
    sent = request_extension(request)
    thinking = _thinking(body, request, sent.thinking or {})
    _sampling(body, request.sampling, thinking=thinking)
    if request.tools:
        body["tools"] = [_tool(tool, sent.tool_cache_control.get(i)) for i, tool in enumerate(request.tools)]
    choice = request.tool_choice
    if choice is not None and (request.tools or choice.mode == "none"):
        body["tool_choice"] = _tool_choice(choice)
    output = _output_config(request, sent.output_config or {})
    if output:
        body["output_config"] = output
    if request.user:
        body["metadata"] = {"user_id": request.user}
    body.update(sent.fields)  # fields dragoman does not model, as the client sent them
    body["stream"] = True
    return body


def _thinking(body: dict[str, Any], request: ChatRequest, sent: dict[str, Any]) -> bool:
    """Set ``thinking`` (and raise ``max_tokens`` above its budget); whether thinking is on.
    ``sent`` is an Anthropic client's own ``thinking``, kept when it still says the same."""
    budget = _thinking_budget(request)
    if budget is not None and _unsigned_tool_turn(body["messages"]):
        budget = None  # Anthropic refuses thinking when the tool turn it continues has no thinking block
    if budget is None:
        if request.reasoning.enabled is False:
            body["thinking"] = sent if sent.get("type") == "disabled" else {"type": "disabled"}
        return False
    if request.reasoning.budget_tokens is None and sent.get("type") not in (None, "enabled", "disabled"):
        body["thinking"] = sent  # a budget-less mode (adaptive ...)
        return True
    if body["max_tokens"] <= budget:
        body["max_tokens"] += budget
    same = sent.get("type") == "enabled" and sent.get("budget_tokens") == budget
    body["thinking"] = sent if same else {"type": "enabled", "budget_tokens": budget}
    return True


def _sampling(body: dict[str, Any], s: Sampling, *, thinking: bool) -> None:
    """Anthropic's ranges: temperature clamped to 0..1; with thinking only temperature 1, top_p >= 0.95."""
    if s.temperature is not None:
        temperature = min(1.0, max(0.0, s.temperature))
        if not thinking or temperature == 1.0:
            body["temperature"] = temperature
    if s.top_p is not None and (not thinking or s.top_p >= 0.95):
        body["top_p"] = s.top_p
    if s.top_k is not None and not thinking:
        body["top_k"] = s.top_k
    if s.stop:
        body["stop_sequences"] = s.stop


def _tool(tool: Tool, cache_control: dict[str, Any] | None) -> dict[str, Any]:
    definition: dict[str, Any] = {"name": tool.name,
                                  "input_schema": tool.parameters or {"type": "object", "properties": {}}}
    if tool.description:
        definition["description"] = tool.description
    if tool.strict is not None:
        definition["strict"] = tool.strict
    if cache_control is not None:
        definition["cache_control"] = cache_control
    return definition


def _tool_choice(choice: ToolChoice) -> dict[str, Any]:
    mode = {"auto": "auto", "required": "any", "tool": "tool", "none": "none"}[choice.mode]
    wire_choice: dict[str, Any] = {"type": mode}
    if mode == "tool":
        wire_choice["name"] = choice.name
    if not choice.parallel and mode != "none":
        wire_choice["disable_parallel_tool_use"] = True
    return wire_choice


def _output_config(request: ChatRequest, sent: dict[str, Any]) -> dict[str, Any]:
    """The client's ``output_config`` as sent (else a ``format`` for a JSON schema); its ``effort``
    follows the canonical effort when that changed (an override), and goes when that is none."""
    output = dict(sent)
    effort = request.reasoning.effort
    if "effort" in output and effort != output["effort"]:
        if effort in OUTPUT_EFFORTS:
            output["effort"] = effort
        else:
            del output["effort"]
    fmt = request.response_format
    if fmt is not None and fmt.type == "json_schema" and fmt.schema is not None and "format" not in output:
        output["format"] = {"type": "json_schema", "schema": fmt.schema}
    return output


def _thinking_budget(request: ChatRequest) -> int | None:
    if request.reasoning.enabled is None:
        return None  # an effort alone (``output_config.effort``) does not ask for thinking
    effort = request.reasoning.effective_effort()
    if effort in (None, "none"):
        return None
    budget = request.reasoning.effective_budget()
    return max(MIN_THINKING_BUDGET, budget or MIN_THINKING_BUDGET)


def _unsigned_tool_turn(turns: list[dict[str, Any]]) -> bool:
    """Whether the last assistant turn calls tools without starting with a (signed) thinking block."""
    last = next((t for t in reversed(turns) if t["role"] == "assistant"), None)
    if last is None or not any(b["type"] == "tool_use" for b in last["content"]):
        return False
    return last["content"][0]["type"] not in ("thinking", "redacted_thinking")


def wire_messages(messages: list[Message]) -> list[dict[str, Any]]:
    """Canonical turns as Anthropic ``messages``: tool results in user turns, same roles merged."""
    turns: list[dict[str, Any]] = []
    for message in messages:
        if message.role is Role.SYSTEM:
            continue
        role = "assistant" if message.role is Role.ASSISTANT else "user"
        blocks = _blocks(message)
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += blocks
        else:
            turns.append({"role": role, "content": blocks})
    for turn in turns:
        if turn["role"] == "user":  # tool results first in a user turn, as the API requires
            content = turn["content"]
            turn["content"] = ([b for b in content if b["type"] == "tool_result"]
                               + [b for b in content if b["type"] != "tool_result"])
    return turns


def _marked(block: dict[str, Any], message: Message, index: int) -> dict[str, Any]:
    """``block`` with the ``cache_control`` mark its part carried from an Anthropic client, if any."""
    extension = message_extension(message)
    mark = extension.cache_control(index) if extension is not None else None
    if mark is not None:
        block["cache_control"] = mark
    return block


def _blocks(message: Message) -> list[dict[str, Any]]:
    blocks = []
    for index, part in enumerate(message.parts):
        block = _block(part, message)
        if block is not None:
            blocks.append(_marked(block, message, index))
    return blocks


def _block(part: Part, message: Message) -> dict[str, Any] | None:
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text} if part.text else None  # Anthropic refuses empty text
    if isinstance(part, ImagePart):
        return _image(part)
    if isinstance(part, ToolCallPart):
        return {"type": "tool_use", "id": part.id or random_id("toolu_"), "name": part.name,
                "input": to_object(part.arguments)}
    if isinstance(part, ToolResultPart):
        result: dict[str, Any] = {"type": "tool_result", "tool_use_id": part.tool_call_id}
        if any(isinstance(p, ImagePart) for p in part.content):
            result["content"] = [_image(p) if isinstance(p, ImagePart) else {"type": "text", "text": p.text}
                                 for p in part.content if not isinstance(p, TextPart) or p.text]
        else:
            result["content"] = part.text
        if part.is_error:
            result["is_error"] = True
        return result
    if isinstance(part, ReasoningPart) and message.role is Role.ASSISTANT:
        if part.redacted is not None:
            return {"type": "redacted_thinking", "data": part.redacted}
        if part.signature:
            return {"type": "thinking", "thinking": part.text, "signature": part.signature}
    return None


def _image(part: ImagePart) -> dict[str, Any]:
    if part.data is not None:
        media_type = part.media_type or sniff_media_type(part.data)
        return {"type": "image", "source": {"type": "base64", "media_type": media_type,
                                            "data": encode_base64(part.data)}}
    return {"type": "image", "source": {"type": "url", "url": part.url or ""}}
