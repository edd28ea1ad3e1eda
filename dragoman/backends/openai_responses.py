"""An upstream that serves its models only through the OpenAI Responses API (``/v1/responses``).

``type: openai-responses`` takes the ``openai`` backend's settings; discovery, auth and error
mapping are the same. Every client dialect reaches these models: the canonical request becomes
Responses input items (stateless: ``store: false``, reasoning sent back as
``encrypted_content``), and the upstream's item-structured stream becomes canonical parts, one
per output item. A request that came through dragoman's own Responses dialect carries its
tools as the client wrote them (``extensions["responses"]``): custom, namespace and hosted
tools (``web_search``...) then reach the upstream natively, and this backend's models declare
the ``hosted_tools`` capability so the dialect passes them on.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from dragoman.backends.base import BackendDeps, CallOptions
from dragoman.backends.http import StreamCall, WholeCall
from dragoman.backends.openai import OpenAIBackend, OpenAISettings
from dragoman.core.events import Event, MessageEnd, MessageStart, PartDelta, PartEnd, PartStart
from dragoman.core.ids import now, random_id
from dragoman.core.sse import ServerSentEvent, SSEDecoder
from dragoman.core.types import (
    ChatRequest,
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
from dragoman.protocols.openai import UPSTREAM_ERROR_CODES

NAMESPACE_SEPARATOR = "__"
CUSTOM_INPUT = "input"
# Create-only fields that the input token count does not take.
COUNT_DROPS = ("stream", "store", "include", "max_output_tokens", "temperature", "top_p", "user")
INCOMPLETE_REASONS: dict[str, FinishReason] = {"max_output_tokens": FinishReason.LENGTH,
                                                "content_filter": FinishReason.CONTENT_FILTER}


class OpenAIResponsesBackend(OpenAIBackend):
    type = "openai-responses"
    api = "responses"

    @classmethod
    def from_config(cls, name: str, settings: Mapping[str, Any], deps: BackendDeps) -> OpenAIResponsesBackend:
        return cls(name, OpenAISettings.model_validate(settings))

    async def count_tokens(self, request: ChatRequest, model: str) -> int | None:
        """The upstream's own count (``/v1/responses/input_tokens``); None (an estimate) when it fails."""
        if not self.uses_responses(model):
            return await super().count_tokens(request, model)
        if self.settings.api_key == "forward":
            return None  # the client's key is not at hand here
        body = build_body(request, model)
        for key in COUNT_DROPS:
            body.pop(key, None)
        try:
            async with asyncio.timeout(10):
                payload = await self.request_json("POST", "/responses/input_tokens", body=body)
        except (aiohttp.ClientError, TimeoutError, GatewayError, OSError):
            return None
        tokens = payload.get("input_tokens") if isinstance(payload, dict) else None
        return tokens if isinstance(tokens, int) else None

    async def chat_call(self, request: ChatRequest, model: str,
                        options: CallOptions) -> StreamCall[ServerSentEvent] | WholeCall[Any]:
        if not self.uses_responses(model):  # ``model_api`` names it ``chat``
            return await super().chat_call(request, model, options)
        return responses_call(self, request, model)


def responses_call(backend: OpenAIBackend, request: ChatRequest, model: str) -> StreamCall[ServerSentEvent]:
    """The upstream call for a model served through the Responses API (by either backend class)."""
    if request.prompt is not None:
        raise GatewayError(ErrorKind.INVALID_REQUEST, f"model {model!r} of backend {backend.name!r} is served "
                           "through the Responses API, which has no raw text completions; use chat", param="prompt")
    body = build_body(request, model)
    decoder = StreamDecoder(backend.name, model)
    return StreamCall("/responses", body, SSEDecoder(backend.max_frame_bytes), decoder.decode, decoder.end)


# ------------------------------------------------------------------------------- the request


@dataclass(slots=True)
class _Names:
    """How canonical tool names map to the client's own (from dragoman's Responses dialect)."""

    custom: set[str] = field(default_factory=set)
    namespaces: dict[str, tuple[str, str]] = field(default_factory=dict)

    def call(self, part: ToolCallPart) -> dict[str, Any]:
        namespace, name = self.namespaces.get(part.name, (None, part.name))
        item: dict[str, Any]
        if part.name in self.custom:
            item = {"type": "custom_tool_call", "call_id": part.id, "name": name,
                    "input": _custom_input(part.arguments)}
        else:
            item = {"type": "function_call", "call_id": part.id, "name": name, "arguments": part.arguments or "{}"}
        if namespace is not None:
            item["namespace"] = namespace
        return item


def build_body(request: ChatRequest, model: str) -> dict[str, Any]:
    native: dict[str, Any] = request.extensions.get("responses") or {}
    names = _Names(set(native.get("custom") or ()),
                   {k: (v[0], v[1]) for k, v in (native.get("namespaces") or {}).items()})
    body: dict[str, Any] = {"model": model, "input": _input(request.messages, names), "stream": True,
                            "store": False}
    s = request.sampling
    for key, value in (("max_output_tokens", s.max_tokens), ("temperature", s.temperature), ("top_p", s.top_p)):
        if value is not None:
            body[key] = value
    if native.get("tools"):
        body["tools"] = native["tools"]
    elif request.tools:
        body["tools"] = [{"type": "function", "name": t.name, "description": t.description,
                          "parameters": t.parameters or {"type": "object", "properties": {}},
                          "strict": bool(t.strict)} for t in request.tools]
    choice = request.tool_choice
    if native.get("tool_choice") is not None:
        body["tool_choice"] = native["tool_choice"]
    elif choice is not None:
        body["tool_choice"] = {"type": "function", "name": choice.name} if choice.mode == "tool" else choice.mode
    if choice is not None and not choice.parallel:
        body["parallel_tool_calls"] = False
    fmt = request.response_format
    if fmt is not None:
        if fmt.type == "json_schema":
            text_format: dict[str, Any] = {"type": "json_schema", "name": fmt.name or "response",
                                           "schema": fmt.schema or {}}
            if fmt.strict is not None:
                text_format["strict"] = fmt.strict
            body["text"] = {"format": text_format}
        elif fmt.type == "json_object":
            body["text"] = {"format": {"type": "json_object"}}
    reasoning = dict(native.get("reasoning") or {})
    effort = request.reasoning.effective_effort()
    if effort is not None:
        reasoning["effort"] = effort
    if reasoning:
        body["reasoning"] = reasoning
        body["include"] = ["reasoning.encrypted_content"]  # stateless: reasoning comes back next turn
    if request.user:
        body["user"] = request.user
    return body


def _input(messages: list[Message], names: _Names) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}
    for message in messages:
        if message.role is Role.ASSISTANT:
            for part in message.parts:
                if isinstance(part, TextPart) and part.text:
                    items.append({"type": "message", "role": "assistant",
                                  "content": [{"type": "output_text", "text": part.text}]})
                elif isinstance(part, ToolCallPart):
                    call_names[part.id] = part.name
                    items.append(names.call(part))
                elif isinstance(part, ReasoningPart) and (part.signature or part.redacted):
                    # Only reasoning the upstream can verify goes back (its encrypted content).
                    summary = [{"type": "summary_text", "text": part.text}] if part.text else []
                    items.append({"type": "reasoning", "summary": summary,
                                  "encrypted_content": part.redacted or part.signature})
            continue
        content: list[dict[str, Any]] = []
        for part in message.parts:
            if isinstance(part, ToolResultPart):
                custom = (part.name or call_names.get(part.tool_call_id)) in names.custom
                output: str | list[dict[str, Any]] = part.text if all(
                    isinstance(p, TextPart) for p in part.content) else [_content_part(p) for p in part.content]
                items.append({"type": "custom_tool_call_output" if custom else "function_call_output",
                              "call_id": part.tool_call_id, "output": output})
            elif isinstance(part, (TextPart, ImagePart)):
                content.append(_content_part(part))
        if content:
            role = "user" if message.role in (Role.USER, Role.TOOL) else "system"
            items.append({"type": "message", "role": role, "content": content})
    return items


def _content_part(part: TextPart | ImagePart) -> dict[str, Any]:
    if isinstance(part, TextPart):
        return {"type": "input_text", "text": part.text}
    url = part.url or f"data:{part.media_type or 'image/png'};base64,{base64.b64encode(part.data or b'').decode()}"
    return {"type": "input_image", "image_url": url, "detail": part.detail or "auto"}


def _custom_input(arguments: str) -> str:
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return arguments
    return str(value[CUSTOM_INPUT]) if isinstance(value, dict) and isinstance(value.get(CUSTOM_INPUT), str) \
        else arguments


# -------------------------------------------------------------------------------- the stream


@dataclass(slots=True)
class _Open:
    index: int
    kind: str  # "text" | "reasoning" | "tool_call"
    item_id: str
    started: bool = False  # reasoning waits for its first text (or its end) to start
    streamed: bool = False
    custom: bool = False


class StreamDecoder:
    """The upstream's SSE events -> canonical block events. Output items are sequential upstream,
    as parts are here; hosted tools' own items (``web_search_call``...) are the upstream's
    business and carry no part."""

    def __init__(self, backend: str, model: str) -> None:
        self.backend = backend
        self.model = model
        self._next = 0
        self._open: _Open | None = None
        self._started = False
        self._calls = False
        self._done = False

    def decode(self, sse: ServerSentEvent) -> list[Event]:
        if not sse.data or sse.data == "[DONE]":
            return []
        try:
            event = orjson.loads(sse.data)
        except orjson.JSONDecodeError as exc:
            raise GatewayError(ErrorKind.UPSTREAM_ERROR, f"upstream {self.backend!r} sent an invalid event") from exc
        if not isinstance(event, dict):
            return []
        kind = str(event.get("type") or sse.event or "")
        events: list[Event] = []
        if not self._started and kind not in ("error", "response.failed"):
            response: dict[str, Any] = event["response"] if isinstance(event.get("response"), dict) else {}
            self._started = True
            events.append(MessageStart(id=str(response.get("id") or random_id("resp_")),
                                       model=str(response.get("model") or self.model),
                                       created=int(response.get("created_at") or now())))
        handler = _HANDLERS.get(kind)
        if handler is not None:
            events += handler(self, event)
        return events

    def end(self) -> list[Event]:
        if not self._done:
            raise GatewayError(ErrorKind.UPSTREAM_ERROR, f"upstream {self.backend!r} closed the stream before the "
                               "answer finished (no response.completed)")
        return []

    # ----------------------------------------------------------------------------- items

    def _item_added(self, event: dict[str, Any]) -> list[Event]:
        item = event.get("item") or {}
        kind, item_id = item.get("type"), str(item.get("id") or "")
        events = self._close()
        if kind == "reasoning":
            self._open = _Open(self._next, "reasoning", item_id)
        elif kind in ("function_call", "custom_tool_call"):
            name = str(item.get("name") or "")
            if item.get("namespace"):
                name = f"{item['namespace']}{NAMESPACE_SEPARATOR}{name}"
            self._open = _Open(self._next, "tool_call", item_id, started=True, custom=kind == "custom_tool_call")
            self._calls = True
            events.append(PartStart(self._next, "tool_call", tool_call_id=str(item.get("call_id") or item_id),
                                    tool_name=name))
        elif kind == "message":
            self._open = _Open(self._next, "text", item_id)
        return events

    def _text(self, event: dict[str, Any], expected: str) -> list[Event]:
        delta = event.get("delta")
        current = self._open
        if current is None or current.kind != expected or not isinstance(delta, str) or not delta:
            return []
        events: list[Event] = []
        if not current.started:
            current.started = True
            events.append(PartStart(current.index, expected))  # type: ignore[arg-type]
        current.streamed = True
        events.append(PartDelta(current.index, delta))
        return events

    def _summary_part(self, event: dict[str, Any]) -> list[Event]:
        current = self._open
        if current is not None and current.kind == "reasoning" and current.streamed and event.get("summary_index"):
            return [PartDelta(current.index, "\n\n")]
        return []

    def _arguments(self, event: dict[str, Any]) -> list[Event]:
        current = self._open
        delta = event.get("delta")
        if current is None or current.kind != "tool_call" or current.custom or not isinstance(delta, str) or not delta:
            return []
        current.streamed = True
        return [PartDelta(current.index, delta)]

    def _item_done(self, event: dict[str, Any]) -> list[Event]:
        item = event.get("item") or {}
        current = self._open
        if current is None or str(item.get("id") or "") != current.item_id:
            return []
        events: list[Event] = []
        kind = item.get("type")
        if current.kind == "text" and not current.streamed:
            text = "".join(str(c.get("text") or c.get("refusal") or "") for c in item.get("content") or ())
            if text:
                events += [PartStart(current.index, "text"), PartDelta(current.index, text)]
                current.started = True
        elif current.kind == "tool_call" and not current.streamed:
            raw = item.get("input") if kind == "custom_tool_call" else item.get("arguments")
            text = orjson.dumps({CUSTOM_INPUT: raw or ""}).decode() if current.custom else str(raw or "")
            if text:
                events.append(PartDelta(current.index, text))
        elif current.kind == "reasoning":
            encrypted = item.get("encrypted_content") if isinstance(item.get("encrypted_content"), str) else None
            if not current.started:
                if encrypted is None:
                    self._open = None  # nothing to carry: no part
                    return events
                events.append(PartStart(current.index, "reasoning", redacted=encrypted))
                events.append(PartEnd(current.index))
                self._open = None
                self._next += 1
                return events
            events.append(PartEnd(current.index, signature=encrypted))
            self._open = None
            self._next += 1
            return events
        return events + self._close()

    def _close(self) -> list[Event]:
        current, self._open = self._open, None
        if current is None or not current.started:
            return []
        self._next += 1
        return [PartEnd(current.index)]

    # -------------------------------------------------------------------------- the end

    def _finished(self, event: dict[str, Any]) -> list[Event]:
        response = event.get("response") or {}
        events = self._close()
        self._done = True
        finish = FinishReason.TOOL_CALLS if self._calls else FinishReason.STOP
        if response.get("status") == "incomplete":
            reason = (response.get("incomplete_details") or {}).get("reason")
            finish = INCOMPLETE_REASONS.get(str(reason), FinishReason.LENGTH)
        return [*events, MessageEnd(finish, _usage(response.get("usage")))]

    def _failed(self, event: dict[str, Any]) -> list[Event]:
        error = event.get("error") if event.get("type") == "error" else (event.get("response") or {}).get("error")
        error = error if isinstance(error, dict) else {"message": event.get("message"), "code": event.get("code")}
        code = str(error.get("code") or "")
        raise GatewayError(UPSTREAM_ERROR_CODES.get(code, ErrorKind.UPSTREAM_ERROR),
                           str(error.get("message") or f"upstream {self.backend!r} failed"), code=code or None)


def _usage(raw: Any) -> Usage:
    if not isinstance(raw, dict):
        return Usage()
    input_details = raw.get("input_tokens_details") or {}
    output_details = raw.get("output_tokens_details") or {}
    return Usage(prompt_tokens=int(raw.get("input_tokens") or 0), completion_tokens=int(raw.get("output_tokens") or 0),
                 reasoning_tokens=int(output_details.get("reasoning_tokens") or 0),
                 cached_tokens=int(input_details.get("cached_tokens") or 0))


_HANDLERS: dict[str, Any] = {
    "response.output_item.added": StreamDecoder._item_added,
    "response.output_item.done": StreamDecoder._item_done,
    "response.output_text.delta": lambda self, e: self._text(e, "text"),
    "response.refusal.delta": lambda self, e: self._text(e, "text"),
    "response.reasoning_summary_text.delta": lambda self, e: self._text(e, "reasoning"),
    "response.reasoning_text.delta": lambda self, e: self._text(e, "reasoning"),
    "response.reasoning_summary_part.added": StreamDecoder._summary_part,
    "response.function_call_arguments.delta": StreamDecoder._arguments,
    "response.completed": StreamDecoder._finished,
    "response.incomplete": StreamDecoder._finished,
    "response.failed": StreamDecoder._failed,
    "error": StreamDecoder._failed,
}
