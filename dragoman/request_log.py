"""One log line per request, and an ``x-request-id`` on every response.

:class:`RequestLog` wraps the whole app (generation, admin, health, unknown paths alike): it
gives the request its id (the client's own ``x-request-id`` when safe, see
:mod:`dragoman.core.request_ids`), adds it to the response's headers, and when the request has
ended (a stream included) logs one line on the ``dragoman.requests`` logger: the id, client,
key name, dialect, method and path, model requested -> served, status, tokens in/out, time to
first token and total time. The key name is the label an operator gave the key; the line never
holds a prompt, a key, a query string or a header. Text fields a client chose (the model name,
the path) are cut short and escaped, so no request can forge a line.

5xx answers log at WARNING, everything else at INFO. With tracing on (:mod:`dragoman.tracing`),
the same wrapper opens and ends the request's span.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dragoman.core.request_ids import SCOPE_CONTEXT, SCOPE_REQUEST_ID, request_id
from dragoman.core.service import CallContext
from dragoman.gateway.outcome import CallOutcome
from dragoman.gateway.principal import Principal
from dragoman.tracing import Tracing

log = logging.getLogger("dragoman.requests")

MAX_FIELD = 200  # characters of a client-chosen field (path, model name) kept in the line


def _clean(text: str) -> str:
    """``text`` safe for a one-line log: printable, no spaces, at most ``MAX_FIELD`` characters."""
    if len(text) > MAX_FIELD:
        text = text[:MAX_FIELD] + "..."
    if text.isprintable() and " " not in text:
        return text
    return text.encode("unicode_escape").decode("ascii").replace(" ", "\\x20")


class RequestEntry:
    """One finished request. The log record's message: ``str()`` is the text line, :meth:`fields`
    what the JSON format writes (``dragoman.logs``)."""

    __slots__ = ("client", "ctx", "method", "ms", "path", "request_id", "status")

    def __init__(self, request_id: str, method: str, path: str, client: str | None, status: int, ms: float,
                 ctx: CallContext | None) -> None:
        self.request_id = request_id
        self.method = method
        self.path = path
        self.client = client
        self.status = status
        self.ms = ms
        self.ctx = ctx

    def fields(self) -> dict[str, Any]:
        ctx = self.ctx
        outcome = ctx.outcome if ctx is not None and isinstance(ctx.outcome, CallOutcome) else None
        principal = ctx.principal if ctx is not None else None
        usage = outcome.usage if outcome is not None else None
        return {
            "request_id": self.request_id,
            "client": self.client,
            "key": principal.name if isinstance(principal, Principal) else None,
            "dialect": ctx.dialect if ctx is not None else None,
            "method": self.method,
            "path": self.path[:MAX_FIELD],
            "model": outcome.requested_model[:MAX_FIELD] if outcome is not None else None,
            "served_by": outcome.target if outcome is not None else None,
            "status": self.status,
            "error": outcome.error_kind if outcome is not None else None,
            "tokens_in": usage.prompt_tokens if usage is not None else None,
            "tokens_out": usage.completion_tokens if usage is not None else None,
            "tokens_estimated": usage.estimated if usage is not None else None,
            "ttft_ms": round(outcome.ttft * 1000, 1) if outcome is not None and outcome.ttft is not None else None,
            "attempts": outcome.attempts if outcome is not None else None,
            "ms": round(self.ms, 1),
        }

    def __str__(self) -> str:
        # Built directly, not from fields(): this runs once per request on the default console.
        parts = [self.method, _clean(self.path), str(self.status), f"{self.ms:.1f}ms", "id=" + self.request_id]
        if self.client:
            parts.append("client=" + _clean(self.client))
        ctx = self.ctx
        if ctx is not None:
            principal = ctx.principal
            if isinstance(principal, Principal):
                parts.append("key=" + _clean(principal.name))
            parts.append("dialect=" + ctx.dialect)
            outcome = ctx.outcome
            if isinstance(outcome, CallOutcome):
                parts.append(f"model={_clean(outcome.requested_model)}->{_clean(outcome.target or '-')}")
                usage = outcome.usage
                mark = "~" if usage.estimated else ""
                parts.append(f"tokens={mark}{usage.prompt_tokens}/{mark}{usage.completion_tokens}")
                if outcome.ttft is not None:
                    parts.append(f"ttft={outcome.ttft * 1000:.1f}ms")
                if outcome.attempts > 1:
                    parts.append(f"attempts={outcome.attempts}")
                if outcome.error_kind is not None:
                    parts.append("error=" + outcome.error_kind)
        return " ".join(parts)


class RequestLog:
    """ASGI wrapper: request id, ``x-request-id`` header, the log line, the request's span."""

    def __init__(self, app: ASGIApp, *, tracing: Tracing | None = None) -> None:
        self.app = app
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        rid = scope[SCOPE_REQUEST_ID] = request_id(scope["headers"])
        header = (b"x-request-id", rid.encode("ascii"))
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        tracing, span, token = self.tracing, None, None
        if tracing is not None:
            client = scope.get("client")
            span, token = tracing.start_request(scope["method"], scope["path"], scope["headers"], rid,
                                                     client[0] if client else None)
        try:
            await self.app(scope, receive, send_with_id)
        except BaseException:
            status = status or 500
            raise
        finally:
            ctx = scope.get(SCOPE_CONTEXT)
            if not status:  # the client left before any answer
                status = 499
            if tracing is not None and span is not None:
                principal = ctx.principal if ctx is not None else None
                tracing.end_request(
                    span, token, status=status, dialect=ctx.dialect if ctx is not None else None,
                    key=principal.name if isinstance(principal, Principal) else None,
                    outcome=ctx.outcome if ctx is not None else None)
            level = logging.WARNING if status >= 500 else logging.INFO
            if log.isEnabledFor(level):
                client = scope.get("client")
                entry = RequestEntry(rid, scope["method"], scope["path"], client[0] if client else None, status,
                                     (time.perf_counter() - started) * 1000, ctx)
                # makeRecord + handle is Logger.log without its search of the stack for the caller.
                log.handle(log.makeRecord(log.name, level, __file__, 0, entry, (), None))
