"""OpenAI's wire tables and error shape, shared by the Chat Completions and Responses dialects
and the OpenAI backend."""

from __future__ import annotations

from typing import Any

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
