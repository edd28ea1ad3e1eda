"""Anthropic's Messages wire tables, shared by the Anthropic dialect and the Anthropic backend,
and the typed data an Anthropic client's request carries for an Anthropic backend (``extensions``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from dragoman.core.types import ChatRequest, FinishReason, Message
from dragoman.errors import ErrorKind

EXTENSION = "anthropic"  # key of an Anthropic client's data in ``extensions``
BETA_HEADER = "anthropic-beta"
OUTPUT_EFFORTS = frozenset({"low", "medium", "high", "xhigh", "max"})  # ``output_config.effort`` levels

# Canonical reason -> ``stop_reason`` (what the dialect writes).
STOP_REASONS: dict[FinishReason, str] = {
    FinishReason.STOP: "end_turn",
    FinishReason.STOP_SEQUENCE: "stop_sequence",
    FinishReason.LENGTH: "max_tokens",
    FinishReason.TOOL_CALLS: "tool_use",
    FinishReason.CONTENT_FILTER: "refusal",
    FinishReason.ERROR: "end_turn",
}

# ``stop_reason`` -> canonical reason (what the backend reads); an unknown one is a stop.
UPSTREAM_STOP_REASONS: dict[str, FinishReason] = {
    "end_turn": FinishReason.STOP,
    "pause_turn": FinishReason.STOP,
    "stop_sequence": FinishReason.STOP_SEQUENCE,
    "max_tokens": FinishReason.LENGTH,
    "model_context_window_exceeded": FinishReason.LENGTH,
    "tool_use": FinishReason.TOOL_CALLS,
    "refusal": FinishReason.CONTENT_FILTER,
}

# Every ``error.type`` Anthropic documents and the kind it stands for (it refines the HTTP
# status table, and is all a mid-stream error has).
ERROR_KINDS: dict[str, ErrorKind] = {
    "invalid_request_error": ErrorKind.INVALID_REQUEST,
    "authentication_error": ErrorKind.AUTHENTICATION,
    "permission_error": ErrorKind.PERMISSION,
    "billing_error": ErrorKind.RATE_LIMITED,
    "not_found_error": ErrorKind.NOT_FOUND,
    "request_too_large": ErrorKind.PAYLOAD_TOO_LARGE,
    "rate_limit_error": ErrorKind.RATE_LIMITED,
    "api_error": ErrorKind.UPSTREAM_ERROR,
    "overloaded_error": ErrorKind.OVERLOADED,
    "timeout_error": ErrorKind.TIMEOUT,
}
# The status an error type stands for, when it arrives mid-stream without one.
ERROR_TYPE_STATUS: dict[str, int] = {"overloaded_error": 529, "rate_limit_error": 429, "api_error": 500,
                                     "timeout_error": 504}


# ------------------------------------------------------------------------------ extensions
# What an Anthropic client sent that the canonical model does not hold, so that a same-protocol
# hop (Anthropic dialect -> Anthropic backend) loses nothing; other backends ignore it.


@dataclass(slots=True)
class PartExtension:
    """What one content block carried beside its canonical part."""

    cache_control: dict[str, Any] | None = None  # the prompt-caching mark, as sent


@dataclass(slots=True)
class MessageExtension:
    """``Message.extensions[EXTENSION]``: per part, by its index in ``Message.parts``."""

    parts: dict[int, PartExtension] = field(default_factory=dict)

    def cache_control(self, index: int) -> dict[str, Any] | None:
        part = self.parts.get(index)
        return part.cache_control if part is not None else None


@dataclass(slots=True)
class RequestExtension:
    """``ChatRequest.extensions[EXTENSION]``: the request-level fields, as sent."""

    tool_cache_control: dict[int, dict[str, Any]] = field(default_factory=dict)  # by tool index
    fields: dict[str, Any] = field(default_factory=dict)  # top-level fields the wire model does not know
    thinking: dict[str, Any] | None = None
    output_config: dict[str, Any] | None = None
    beta: str | None = None  # the ``anthropic-beta`` header


def request_extension(request: ChatRequest) -> RequestExtension:
    """The request's Anthropic data; an empty one when it came from another dialect."""
    extension = request.extensions.get(EXTENSION)
    return extension if isinstance(extension, RequestExtension) else RequestExtension()


def message_extension(message: Message) -> MessageExtension | None:
    extension = message.extensions.get(EXTENSION)
    return extension if isinstance(extension, MessageExtension) else None


# ------------------------------------------------------------------------------ upstream stream
# One ``data:`` payload of a Messages stream, decoded straight into typed structs (fields
# dragoman does not read are skipped). One flat shape serves every event type, so an event type
# or block type dragoman does not know decodes too and is then ignored.


class Usage(msgspec.Struct):
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None


class MessageInfo(msgspec.Struct):
    id: str | None = None
    model: str | None = None
    usage: Usage | None = None


class ContentBlock(msgspec.Struct):
    type: str | None = None
    text: str | None = None
    thinking: str | None = None
    signature: str | None = None
    data: str | None = None  # redacted_thinking
    id: str | None = None
    name: str | None = None
    input: Any = None  # tool_use: the whole input when it came at the start


class Delta(msgspec.Struct):
    """A ``content_block_delta``'s or a ``message_delta``'s ``delta``."""

    type: str | None = None
    text: str | None = None
    thinking: str | None = None
    partial_json: str | None = None
    signature: str | None = None
    stop_reason: str | None = None
    stop_sequence: str | None = None


class StreamEvent(msgspec.Struct):
    type: str | None = None
    index: int | None = None
    message: MessageInfo | None = None
    content_block: ContentBlock | None = None
    delta: Delta | None = None
    usage: Usage | None = None
    error: Any = None  # ``{"type", "message"}``


STREAM_EVENT = msgspec.json.Decoder(StreamEvent)
