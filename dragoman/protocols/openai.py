"""OpenAI's error shape, shared by the Chat Completions and the Responses dialects."""

from __future__ import annotations

from typing import Any

from dragoman.errors import ErrorKind, GatewayError

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
