"""OpenAI's wire tables and error shape, shared by the Chat Completions and Responses dialects
and the OpenAI backend."""

from __future__ import annotations

from typing import Any

import msgspec

from dragoman.core.types import FinishReason
from dragoman.errors import ErrorKind, GatewayError

# Canonical reason -> ``finish_reason`` (what a dialect writes).
FINISH_REASONS: dict[FinishReason, str] = {
    FinishReason.STOP: "stop",
    FinishReason.STOP_SEQUENCE: "stop",
    FinishReason.LENGTH: "length",
    FinishReason.TOOL_CALLS: "tool_calls",
    FinishReason.CONTENT_FILTER: "content_filter",
    FinishReason.ERROR: "stop",
}

# ``finish_reason`` -> canonical reason (what a backend reads); an unknown one is a stop.
UPSTREAM_FINISH_REASONS: dict[str, FinishReason] = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "tool_calls": FinishReason.TOOL_CALLS,
    "function_call": FinishReason.TOOL_CALLS,
    "content_filter": FinishReason.CONTENT_FILTER,
}

# Structured ``error.code`` values from an upstream that refine its HTTP status.
UPSTREAM_ERROR_CODES: dict[str, ErrorKind] = {
    "context_length_exceeded": ErrorKind.CONTEXT_TOO_LONG,
    "model_not_found": ErrorKind.NOT_FOUND,
    "rate_limit_exceeded": ErrorKind.RATE_LIMITED,
    "insufficient_quota": ErrorKind.RATE_LIMITED,
}

# Each kind's ``type`` and default ``code`` in an OpenAI error body.
ERROR_TYPES: dict[ErrorKind, tuple[str, str | None]] = {
    ErrorKind.INVALID_REQUEST: ("invalid_request_error", None),
    ErrorKind.CONTEXT_TOO_LONG: ("invalid_request_error", "context_length_exceeded"),
    ErrorKind.AUTHENTICATION: ("authentication_error", "invalid_api_key"),
    ErrorKind.PERMISSION: ("permission_error", None),
    ErrorKind.NOT_FOUND: ("invalid_request_error", "model_not_found"),
    ErrorKind.REQUEST_TIMEOUT: ("invalid_request_error", "request_timeout"),
    ErrorKind.PAYLOAD_TOO_LARGE: ("invalid_request_error", "request_too_large"),
    ErrorKind.RATE_LIMITED: ("rate_limit_error", "rate_limit_exceeded"),
    ErrorKind.UPSTREAM_ERROR: ("api_error", "upstream_error"),
    ErrorKind.UPSTREAM_UNAVAILABLE: ("api_error", "upstream_unavailable"),
    ErrorKind.OVERLOADED: ("overloaded_error", "overloaded"),
    ErrorKind.TIMEOUT: ("timeout_error", "timeout"),
    ErrorKind.CANCELLED: ("api_error", "cancelled"),
    ErrorKind.INTERNAL: ("server_error", None),
}


def error_body(error: GatewayError, *, not_found_code: str = "model_not_found") -> dict[str, Any]:
    """``{"error": {message, type, param, code}}``; ``not_found_code`` names what was missing
    (a model for Chat Completions, a stored response for the Responses API)."""
    kind_type, kind_code = ERROR_TYPES[error.kind]
    if error.kind is ErrorKind.NOT_FOUND:
        kind_code = not_found_code
    return {"error": {"message": error.message, "type": kind_type, "param": error.param,
                      "code": error.code or kind_code}}


# ------------------------------------------------------------------------------ upstream answers
# What an OpenAI-compatible upstream answers (Chat Completions and legacy completions, whole or as
# stream chunks), decoded straight from JSON into typed structs: fields dragoman does not read are
# skipped by the decoder, never built. Types are as lenient as real servers need (``created`` as a
# float, ``arguments`` as an object from some servers' whole answers); a value of another type is an
# invalid answer. ``logprobs`` stays raw JSON: its entries go on to the client as they came.


class FunctionCall(msgspec.Struct):
    name: str | None = None
    arguments: Any = None  # text (the spec), an object (some servers), or absent in a stream's later deltas


class ToolCall(msgspec.Struct):
    index: int | None = 0
    id: str | None = None
    function: FunctionCall | None = None


class Message(msgspec.Struct):
    """A whole answer's ``message`` or a chunk's ``delta``."""

    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    tool_calls: list[ToolCall] | None = None


class Choice(msgspec.Struct):
    index: int | None = 0
    message: Message | None = None
    delta: Message | None = None
    text: str | msgspec.UnsetType | None = msgspec.UNSET  # legacy completions; set only there
    logprobs: Any = None
    finish_reason: str | None = None


class TokenDetails(msgspec.Struct):
    reasoning_tokens: int | None = None
    cached_tokens: int | None = None


class Usage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    completion_tokens_details: TokenDetails | None = None
    prompt_tokens_details: TokenDetails | None = None


class Completion(msgspec.Struct):
    """A whole answer or one stream chunk (``chat.completion[.chunk]``, ``text_completion``)."""

    id: str | None = None
    model: str | None = None
    created: int | float | None = None
    choices: list[Choice] | None = None
    usage: Usage | None = None
    error: Any = None  # a mid-stream error: an object with a message, or a string


COMPLETION = msgspec.json.Decoder(Completion)
