"""The one error type of the gateway.

Every failure, whether a bad request, a missing key or an upstream that fell over, becomes a
:class:`GatewayError` with an :class:`ErrorKind`. Backends map upstream statuses and client
exceptions to it by table; dialects render it in their own wire shape. Before the first byte
of a response it becomes an HTTP status, after it an in-stream error frame.

Hierarchy (all are ``GatewayError``; the kind says which):

* ``INVALID_REQUEST`` 400: the request cannot be served as written.
* ``CONTEXT_TOO_LONG`` 400: the prompt does not fit the model's context window.
* ``AUTHENTICATION`` 401, ``PERMISSION`` 403, ``NOT_FOUND`` 404.
* ``REQUEST_TIMEOUT`` 408: the client stopped sending its request body.
* ``PAYLOAD_TOO_LARGE`` 413.
* ``RATE_LIMITED`` 429 (``retry_after`` seconds when known).
* ``UPSTREAM_ERROR`` 502: the upstream answered with an error or garbage.
* ``UPSTREAM_UNAVAILABLE`` 503: the upstream could not be reached.
* ``OVERLOADED`` 503: the upstream or a local queue is full.
* ``TIMEOUT`` 504 (``DeadlineExceeded`` when the request's total time limit passed).
* ``CANCELLED`` 499: the client went away (only ever recorded, never sent).
* ``INTERNAL`` 500: a bug in dragoman.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorKind(StrEnum):
    INVALID_REQUEST = "invalid_request"
    CONTEXT_TOO_LONG = "context_too_long"
    AUTHENTICATION = "authentication"
    PERMISSION = "permission"
    NOT_FOUND = "not_found"
    REQUEST_TIMEOUT = "request_timeout"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    RATE_LIMITED = "rate_limited"
    UPSTREAM_ERROR = "upstream_error"
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    OVERLOADED = "overloaded"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    INTERNAL = "internal"


DEFAULT_STATUS: dict[ErrorKind, int] = {
    ErrorKind.INVALID_REQUEST: 400,
    ErrorKind.CONTEXT_TOO_LONG: 400,
    ErrorKind.AUTHENTICATION: 401,
    ErrorKind.PERMISSION: 403,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.REQUEST_TIMEOUT: 408,
    ErrorKind.PAYLOAD_TOO_LARGE: 413,
    ErrorKind.RATE_LIMITED: 429,
    ErrorKind.UPSTREAM_ERROR: 502,
    ErrorKind.UPSTREAM_UNAVAILABLE: 503,
    ErrorKind.OVERLOADED: 503,
    ErrorKind.TIMEOUT: 504,
    ErrorKind.CANCELLED: 499,
    ErrorKind.INTERNAL: 500,
}

# Kinds a router may retry on another attempt or deployment: the request itself was fine.
RETRYABLE_KINDS = frozenset(
    {ErrorKind.RATE_LIMITED, ErrorKind.UPSTREAM_ERROR, ErrorKind.UPSTREAM_UNAVAILABLE,
     ErrorKind.OVERLOADED, ErrorKind.TIMEOUT}
)


class GatewayError(Exception):
    """A failure with a kind, a client-facing message and, when it came from upstream, its status."""

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        status: int | None = None,
        upstream_status: int | None = None,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        # Upstream 4xx statuses pass through as they were; everything else uses the kind's status.
        self.status = status if status is not None else DEFAULT_STATUS[kind]
        self.upstream_status = upstream_status
        self.param = param
        self.code = code
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE_KINDS

    def __repr__(self) -> str:
        return f"GatewayError({self.kind.value!r}, {self.message!r}, status={self.status})"


class DeadlineExceeded(GatewayError):
    """A ``TIMEOUT``: the request's total time limit passed. No retry or fallback can help (the time
    is the request's, not the deployment's), so routing stops here and no cooldown counts it."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorKind.TIMEOUT, message)

    @property
    def retryable(self) -> bool:
        return False


def invalid_request(message: str, param: str | None = None, *, code: str | None = None) -> GatewayError:
    """A 400 naming the field at fault (``param``), in every dialect's error shape."""
    return GatewayError(ErrorKind.INVALID_REQUEST, message, param=param, code=code)


def not_found(message: str, *, code: str | None = "model_not_found", param: str | None = "model") -> GatewayError:
    return GatewayError(ErrorKind.NOT_FOUND, message, code=code, param=param)
