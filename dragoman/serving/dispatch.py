"""Generation requests go straight to their handler; everything else to the app's router.

Generation requests are nearly every request a gateway serves, and Starlette's router, error
middleware and per-message send wrappers cost more than the handler's own bookkeeping. A
browser's request (it carries ``Origin``) takes the same handler, inside CORS.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send


def has_origin(scope: Scope) -> bool:
    """A browser's request (``Origin`` set): the only kind CORS applies to."""
    return any(name == b"origin" for name, _ in scope["headers"])


class CORSWhenOrigin:
    """CORS for requests that carry ``Origin`` (browsers); every other request skips the work."""

    def __init__(self, app: ASGIApp, **options: Any) -> None:
        self.app = app
        self.cors = CORSMiddleware(app, **options)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and has_origin(scope):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)


class GenerationRoutes:
    """``POST`` to a generation path: its handler (with CORS when the request has ``Origin``);
    any other request: ``app``."""

    def __init__(self, app: ASGIApp, handlers: Mapping[str, ASGIApp], **cors: Any) -> None:
        self.app = app
        self.handlers = dict(handlers)
        self.cors = CORSMiddleware(self._handle, **cors)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = self.handlers.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if handler is None:
            await self.app(scope, receive, send)
        elif has_origin(scope):
            await self.cors(scope, receive, send)
        else:
            await handler(scope, receive, send)

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.handlers[scope["path"]](scope, receive, send)
