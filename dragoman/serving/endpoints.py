"""A dialect's plain endpoints (models, embeddings, tokenize...): the shape they all share.

Each gets the call's context with its key checked, and answers any ``GatewayError`` the way
its dialect renders errors, so an endpoint holds only what is its own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from dragoman.core.dialect import WireError
from dragoman.core.service import CallContext, GatewayService
from dragoman.errors import GatewayError
from dragoman.serving.answers import wire_error_response
from dragoman.serving.context import call_context

Endpoint = Callable[[Request], Awaitable[Response]]


def guarded(name: str, service: GatewayService, render_error: Callable[[GatewayError, CallContext], WireError],
            handler: Callable[[Request, CallContext], Awaitable[Response]]) -> Endpoint:
    """``handler`` with an authenticated context, its ``GatewayError`` rendered by ``render_error``."""
    async def endpoint(request: Request) -> Response:
        ctx = call_context(request.scope, name)
        try:
            await service.authenticate(ctx)
            return await handler(request, ctx)
        except GatewayError as exc:
            return wire_error_response(exc, render_error(exc, ctx))
    return endpoint


def routes(table: Iterable[tuple[str, Endpoint, list[str]]], prefixes: Sequence[str] = ("",)) -> list[BaseRoute]:
    """A route for each ``(path, endpoint, methods)`` under each prefix."""
    entries = list(table)
    return [Route(prefix + path, endpoint, methods=methods)
            for prefix in prefixes for path, endpoint, methods in entries]
