"""Anthropic's Messages wire tables, shared by the Anthropic dialect and the Anthropic backend."""

from __future__ import annotations

from dragoman.core.types import FinishReason
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

