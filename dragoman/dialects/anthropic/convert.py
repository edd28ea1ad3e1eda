"""Anthropic Messages wire <-> canonical: requests in, messages, models and errors out.

Decisions worth knowing:

* ``tool_result`` blocks of a user turn become canonical ``Role.TOOL`` messages (one per
  result, in order) and the turn's other blocks a ``Role.USER`` message after them, which is
  what every backend expects; the Anthropic backend merges them back into one user turn.
* Each ``system`` text block is its own system message, so an Anthropic backend can send
  the blocks back as they came.
* A tool call's ``input`` is the canonical argument text as an object by the rules of
  :mod:`dragoman.core.jsonprefix` (the same in a stream): text that is not a valid JSON
  object becomes its longest valid object prefix, closed (``{}`` at worst), never an error.
* A thinking block without a signature (reasoning from a non-Anthropic model) is rendered
  with ``"signature": ""``; a signature sent back empty reads as none.
* What an Anthropic backend needs to send the request on as it came rides in
  ``extensions["anthropic"]`` as the typed records of :mod:`dragoman.protocols.anthropic`; other
  backends ignore it. On a message, a ``MessageExtension``: the ``cache_control`` mark of each
  block's part. On the request, a ``RequestExtension``: ``tool_cache_control`` (by tool index);
  ``fields``, every top-level field the wire model does not know (``context_management``,
  ``cache_control``, ``service_tier``, ``container`` ...), as sent; ``thinking`` and
  ``output_config`` as sent (newer keys such as ``thinking.display`` included); ``beta``, the
  ``anthropic-beta`` header.
* ``output_config.effort`` is the canonical reasoning effort; without ``thinking`` it does not
  turn thinking on (``Reasoning.enabled`` stays None), so an OpenAI upstream gets it as
  ``reasoning_effort`` and an Ollama one as ``think``, while an Anthropic one gets the
  ``output_config`` as sent.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import BaseModel

from dragoman.core.ids import random_id
from dragoman.core.images import decode_base64
from dragoman.core.jsonprefix import to_object
from dragoman.core.limits import check_stop_sequences
from dragoman.core.models import ModelEntry
from dragoman.core.types import (
    ChatRequest,
    ChatResponse,
    FinishReason,
    ImagePart,
    Message,
    Part,
    Reasoning,
    ReasoningPart,
    ResponseFormat,
    Role,
    Sampling,
    TextPart,
    Tool,
    ToolCallPart,
    ToolChoice,
    ToolResultPart,
    Usage,
)
from dragoman.dialects.anthropic import wire
from dragoman.dialects.validation import validated
from dragoman.errors import ErrorKind, GatewayError
from dragoman.protocols.anthropic import (
    ERROR_KINDS,
    EXTENSION,
    STOP_REASONS,
    MessageExtension,
    PartExtension,
    RequestExtension,
)

# Anthropic's documented default; top_p and top_k have none (the model decides).
DEFAULTS = Sampling(temperature=1.0)

# https://docs.anthropic.com/en/api/errors: error ``type`` by HTTP status.
STATUS_ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}
KIND_ERROR_TYPES: dict[ErrorKind, str] = {
    ErrorKind.OVERLOADED: "overloaded_error",
    ErrorKind.TIMEOUT: "timeout_error",
    ErrorKind.RATE_LIMITED: "rate_limit_error",
    ErrorKind.AUTHENTICATION: "authentication_error",
    ErrorKind.PERMISSION: "permission_error",
    ErrorKind.NOT_FOUND: "not_found_error",
    ErrorKind.PAYLOAD_TOO_LARGE: "request_too_large",
    ErrorKind.INVALID_REQUEST: "invalid_request_error",
    ErrorKind.CONTEXT_TOO_LONG: "invalid_request_error",
}


# ------------------------------------------------------------------------------------ errors


def error_status(error: GatewayError) -> int:
    """The HTTP status: an upstream 529 stays 529 (Anthropic's "overloaded"), else the error's own."""
    return 529 if error.upstream_status == 529 else error.status


def error_type(error: GatewayError) -> str:
    """Anthropic's ``error.type``: the upstream's own when it was Anthropic, else by kind and status."""
    if error.code in ERROR_KINDS:
        return str(error.code)
    status = error_status(error)
    if error.kind in KIND_ERROR_TYPES:
        return KIND_ERROR_TYPES[error.kind]
    return STATUS_ERROR_TYPES.get(status) or ("invalid_request_error" if status < 500 else "api_error")


def error_body(error: GatewayError, request_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "error", "error": {"type": error_type(error), "message": error.message}}
    if request_id:
        body["request_id"] = request_id
    return body


# ---------------------------------------------------------------------------------- requests


def parse_messages(body: Any, *, beta: str | None = None) -> ChatRequest:
    """``beta``: the client's ``anthropic-beta`` header, kept for an Anthropic backend."""
    req = validated(wire.MessagesRequest, body)
    chat = _chat_request(req, body, beta)
    chat.stream = bool(req.stream)
    stop = list(req.stop_sequences or [])
    check_stop_sequences(stop, "stop_sequences")
    chat.sampling = Sampling(temperature=req.temperature, top_p=req.top_p, top_k=req.top_k,
                             max_tokens=req.max_tokens, stop=stop)
    chat.user = req.metadata.user_id if req.metadata else None
    return chat


def parse_count_tokens(body: Any, *, beta: str | None = None) -> ChatRequest:
    return _chat_request(validated(wire.CountTokensRequest, body), body, beta)


def _chat_request(req: wire.CountTokensRequest, body: dict[str, Any], beta: str | None) -> ChatRequest:
    """``body`` is the validated request's JSON, whose values go to an Anthropic backend as sent."""
    messages = _system(req.system) + _messages(req.messages)
    tools = _tools(req.tools or [])
    extension = RequestExtension(
        tool_cache_control={i: mark for i, t in enumerate(req.tools or []) if (mark := _cache_mark(t)) is not None},
        fields={name: body[name] for name in req.model_extra or ()},
        thinking=body.get("thinking"), output_config=body.get("output_config"), beta=beta or None)
    return ChatRequest(
        extensions={EXTENSION: extension} if extension != RequestExtension() else {},
        model=req.model,
        messages=messages,
        defaults=DEFAULTS,
        tools=tools,
        tool_choice=_tool_choice(req.tool_choice, tools),
        response_format=_response_format(req.output_config),
        reasoning=_reasoning(req.thinking, req.output_config),
    )


def _system(system: str | list[wire.TextBlock] | None) -> list[Message]:
    if system is None:
        return []
    if isinstance(system, str):
        return [Message(Role.SYSTEM, [TextPart(system)])] if system else []
    return [Message(Role.SYSTEM, [TextPart(block.text)], extensions=_marks({0: _cache_mark(block)}))
            for block in system]


def _system_block(block: Any, where: str) -> wire.TextBlock:
    if not isinstance(block, wire.TextBlock):
        raise _unsupported_block(block, where, "system")
    return block


def _cache_mark(model: BaseModel) -> dict[str, Any] | None:
    """A ``cache_control`` mark the client put on a block or tool (kept as sent)."""
    return (model.model_extra or {}).get("cache_control")


def _marks(by_part: dict[int, dict[str, Any] | None]) -> dict[str, Any]:
    """Message extensions holding the ``cache_control`` marks of its parts, if any."""
    parts = {i: PartExtension(cache_control=mark) for i, mark in by_part.items() if mark is not None}
    return {EXTENSION: MessageExtension(parts)} if parts else {}


def _tools(definitions: list[wire.ToolDefinition]) -> list[Tool]:
    tools = []
    for i, definition in enumerate(definitions):
        if definition.type not in (None, "custom"):
            raise GatewayError(ErrorKind.INVALID_REQUEST,
                               f"tools[{i}]: server tool {definition.name!r} (type {definition.type!r}) is not "
                               "supported by dragoman; declare a custom tool with an input_schema instead",
                               param=f"tools[{i}].type")
        if definition.input_schema is None:
            problem = "must be a JSON schema object, not null" \
                if "input_schema" in definition.model_fields_set else "field required"
            raise GatewayError(ErrorKind.INVALID_REQUEST, f"tools[{i}].input_schema: {problem}",
                               param=f"tools[{i}].input_schema")
        tools.append(Tool(definition.name, definition.description, definition.input_schema, definition.strict))
    return tools


def _tool_choice(choice: wire.ToolChoice | None, tools: list[Tool]) -> ToolChoice | None:
    if choice is None:
        return None
    parallel = not choice.disable_parallel_tool_use
    if choice.type == "tool":
        if not choice.name:
            problem = "field required" if choice.name is None else "must not be empty"
            raise GatewayError(ErrorKind.INVALID_REQUEST, f"tool_choice.name: {problem}", param="tool_choice.name")
        if not any(t.name == choice.name for t in tools):
            raise GatewayError(ErrorKind.INVALID_REQUEST, f"tool_choice names unknown tool {choice.name!r}",
                               param="tool_choice.name")
        return ToolChoice(mode="tool", name=choice.name, parallel=parallel)
    if choice.type == "any":
        if not tools:
            raise GatewayError(ErrorKind.INVALID_REQUEST, "tool_choice any requires tools", param="tool_choice")
        return ToolChoice(mode="required", parallel=parallel)
    return ToolChoice(mode=choice.type, parallel=parallel)


def _reasoning(thinking: wire.ThinkingConfig | None, output: wire.OutputConfig | None) -> Reasoning:
    effort = output.effort if output is not None else None
    if thinking is None:
        return Reasoning(effort=effort)  # how much to spend; thinking itself is not asked for
    if thinking.type == "disabled":
        return Reasoning(enabled=False, effort=effort)
    budget = thinking.budget_tokens if thinking.type == "enabled" else None
    return Reasoning(enabled=True, effort=effort, budget_tokens=budget)


def _response_format(output: wire.OutputConfig | None) -> ResponseFormat | None:
    if output is None or output.format is None:
        return None
    return ResponseFormat(type="json_schema", schema=output.format.schema_, name="response")


def _messages(params: list[wire.MessageParam]) -> list[Message]:
    out: list[Message] = []
    tool_names: dict[str, str] = {}
    for i, param in enumerate(params):
        where = f"messages[{i}]"
        if isinstance(param.content, str):
            out.append(Message(Role(param.role), [TextPart(param.content)]))
            continue
        if param.role == "system":
            out += _system([_system_block(b, f"{where}.content[{j}]") for j, b in enumerate(param.content)])
        elif param.role == "assistant":
            out.append(Message(Role.ASSISTANT, _assistant_parts(param.content, where, tool_names),
                               extensions=_marks({j: _cache_mark(b) for j, b in enumerate(param.content)})))
        else:
            out += _user_messages(param.content, where, tool_names)
    return out


def _assistant_parts(blocks: list[Any], where: str, tool_names: dict[str, str]) -> list[Part]:
    parts: list[Part] = []
    for j, block in enumerate(blocks):
        at = f"{where}.content[{j}]"
        if isinstance(block, wire.TextBlock):
            parts.append(TextPart(block.text))
        elif isinstance(block, wire.ThinkingBlock):
            parts.append(ReasoningPart(text=block.thinking, signature=block.signature or None))
        elif isinstance(block, wire.RedactedThinkingBlock):
            parts.append(ReasoningPart(redacted=block.data))
        elif isinstance(block, wire.ToolUseBlock):
            tool_names[block.id] = block.name
            parts.append(ToolCallPart(id=block.id, name=block.name, arguments=orjson.dumps(block.input).decode()))
        else:
            raise _unsupported_block(block, at, "assistant")
    return parts


def _user_messages(blocks: list[Any], where: str, tool_names: dict[str, str]) -> list[Message]:
    """Tool results as ``Role.TOOL`` messages, the rest of the turn as one user message after them."""
    out: list[Message] = []
    plain: list[Part] = []
    plain_marks: dict[int, dict[str, Any] | None] = {}
    for j, block in enumerate(blocks):
        at = f"{where}.content[{j}]"
        if isinstance(block, wire.ToolResultBlock):
            out.append(Message(Role.TOOL, [_tool_result(block, at, tool_names)],
                               extensions=_marks({0: _cache_mark(block)})))
            continue
        plain_marks[len(plain)] = _cache_mark(block)
        if isinstance(block, wire.TextBlock):
            plain.append(TextPart(block.text))
        elif isinstance(block, wire.ImageBlock):
            plain.append(_image(block, at))
        else:
            raise _unsupported_block(block, at, "user")
    if plain or not out:
        out.append(Message(Role.USER, plain, extensions=_marks(plain_marks)))
    return out


def _tool_result(block: wire.ToolResultBlock, where: str, tool_names: dict[str, str]) -> ToolResultPart:
    content: list[TextPart | ImagePart] = []
    if isinstance(block.content, str):
        content.append(TextPart(block.content))
    else:
        for k, item in enumerate(block.content or []):
            at = f"{where}.content[{k}]"
            if isinstance(item, wire.TextBlock):
                content.append(TextPart(item.text))
            elif isinstance(item, wire.ImageBlock):
                content.append(_image(item, at))
            else:
                raise GatewayError(ErrorKind.INVALID_REQUEST,
                                   f"{at}: tool_result content type {item.type!r} is not supported", param=at)
    return ToolResultPart(tool_call_id=block.tool_use_id, content=content, name=tool_names.get(block.tool_use_id),
                          is_error=bool(block.is_error))


def _image(block: wire.ImageBlock, where: str) -> ImagePart:
    source = block.source
    if isinstance(source, wire.Base64Source):
        return ImagePart(data=decode_base64(source.data, param=f"{where}.source.data"), media_type=source.media_type)
    if isinstance(source, wire.URLSource):
        if not source.url.startswith(("http://", "https://")):
            raise GatewayError(ErrorKind.INVALID_REQUEST, f"{where}.source.url must be an http(s) URL",
                               param=f"{where}.source.url")
        return ImagePart(url=source.url)
    raise GatewayError(ErrorKind.INVALID_REQUEST,
                       f"{where}.source: image source type {source.type!r} is not supported; use base64 or url",
                       param=f"{where}.source.type")


def _unsupported_block(block: Any, where: str, role: str) -> GatewayError:
    kind = getattr(block, "type", "?")
    return GatewayError(ErrorKind.INVALID_REQUEST,
                        f"{where}: content block type {kind!r} is not supported in {role} messages", param=where)


# --------------------------------------------------------------------------------- responses


def message_id(canonical_id: str) -> str:
    if canonical_id.startswith("msg_"):
        return canonical_id
    rest = canonical_id.removeprefix("chatcmpl-")
    return "msg_" + rest if rest else random_id("msg_")


def tool_use_id(canonical_id: str) -> str:
    return canonical_id or random_id("toolu_")


def usage_body(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": max(0, usage.prompt_tokens - usage.cached_tokens),
        "output_tokens": usage.completion_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": usage.cached_tokens,
    }


def content_block(part: Part) -> dict[str, Any] | None:
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    if isinstance(part, ReasoningPart):
        if part.redacted is not None:
            return {"type": "redacted_thinking", "data": part.redacted}
        return {"type": "thinking", "thinking": part.text, "signature": part.signature or ""}
    if isinstance(part, ToolCallPart):
        return {"type": "tool_use", "id": tool_use_id(part.id), "name": part.name, "input": to_object(part.arguments)}
    return None


def render_message(response: ChatResponse, model: str) -> dict[str, Any]:
    blocks = [block for block in (content_block(p) for p in response.parts) if block is not None]
    return {
        "id": message_id(response.id),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": blocks,
        "stop_reason": STOP_REASONS[response.finish_reason],
        "stop_sequence": response.stop_sequence if response.finish_reason is FinishReason.STOP_SEQUENCE else None,
        "usage": usage_body(response.usage),
    }


def model_body(entry: ModelEntry) -> dict[str, Any]:
    created = datetime.fromtimestamp(entry.info.created or 0, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    body: dict[str, Any] = {"type": "model", "id": entry.id, "display_name": entry.id, "created_at": created,
                            "lifecycle": "active"}
    if entry.info.context_length:
        body["max_input_tokens"] = entry.info.context_length
    return body
