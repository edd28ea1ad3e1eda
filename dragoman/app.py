"""Assembly: build every part from the config, wire them together, start and stop them.

Nothing is global: ``create_app`` builds the backends, the registry, the gateway and the
dialects and hands each its dependencies, so a test can build as many apps as it likes.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from dragoman.backends.base import Backend, BackendDeps, Timeouts
from dragoman.backends.registry import backend_class
from dragoman.config import Config, ConfigError, describe_validation_error
from dragoman.dialects.common import json_response
from dragoman.dialects.openai.routes import OpenAIDialect
from dragoman.gateway.registry import ModelRegistry
from dragoman.pipeline import Gateway

log = logging.getLogger("dragoman")

ReadyHook = Callable[["AppServices"], Awaitable[None]]


@dataclass(slots=True)
class AppServices:
    """Everything one app instance owns; reachable as ``app.state.services``."""

    config: Config
    backends: list[Backend]
    registry: ModelRegistry
    gateway: Gateway
    ready: bool = False
    startup_hooks: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    shutdown_hooks: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


def build_backends(config: Config, deps: BackendDeps) -> list[Backend]:
    """Every configured backend, or a ``ConfigError`` naming the entry and the problem."""
    source = str(config.source) if config.source else "(built-in config)"
    backends = []
    for index, entry in enumerate(config.backends):
        where = f"{source}: backends[{index}] ({entry.name})"
        try:
            cls = backend_class(entry.type)
        except ValueError as exc:
            raise ConfigError(f"{where}.type: {exc}") from exc
        except ImportError as exc:
            raise ConfigError(f"{where}.type: backend type {entry.type!r} needs an optional dependency "
                              f"that is not installed ({exc.name}); see the README") from exc
        try:
            backends.append(cls.from_config(entry.name, entry.settings, deps))
        except ValidationError as exc:
            raise ConfigError(f"{where}.{describe_validation_error(exc)}") from exc
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
    return backends


class StartTimeMiddleware:
    """Stamps the arrival time on the scope, so latency figures include body reading."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope["dragoman.started_at"] = time.perf_counter()
        await self.app(scope, receive, send)


def create_app(config: Config, *, on_ready: ReadyHook | None = None) -> Starlette:
    deps = BackendDeps(config_dir=config.config_dir)
    backends = build_backends(config, deps)
    registry = ModelRegistry(backends, config.aliases, refresh_seconds=config.model_refresh_seconds)
    timeouts = Timeouts(config.timeouts.connect, config.timeouts.first_byte, config.timeouts.idle)
    gateway = Gateway(registry, overrides=config.overrides, timeouts=timeouts,
                      forward_keys=config.auth.mode != "keys")
    services = AppServices(config=config, backends=backends, registry=registry, gateway=gateway)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        started: list[Backend] = []
        try:
            for backend in backends:
                await backend.start()
                started.append(backend)
            for hook in services.startup_hooks:
                await hook()
            await registry.refresh(force=True)
            services.ready = True
            if on_ready is not None:
                await on_ready(services)
            yield
        finally:
            services.ready = False
            for hook in reversed(services.shutdown_hooks):
                try:
                    await hook()
                except Exception:
                    log.exception("shutdown hook failed")
            for backend in reversed(started):
                try:
                    await backend.aclose()
                except Exception:
                    log.exception("closing backend %s failed", backend.name)

    async def root(request: Request) -> Response:
        # Ollama clients probe HEAD / and check this exact body.
        return PlainTextResponse("Ollama is running")

    async def health(request: Request) -> Response:
        if not services.ready:
            return json_response({"status": "starting"}, status=503)
        return json_response({"status": "ok"})

    routes: list[BaseRoute] = [
        Route("/", root, methods=["GET", "HEAD"]),
        Route("/health", health, methods=["GET", "HEAD"]),
    ]
    routes += OpenAIDialect(gateway).routes()

    middleware = [
        Middleware(StartTimeMiddleware),
        Middleware(CORSMiddleware, allow_origins=config.server.cors_origins, allow_methods=["*"],
                   allow_headers=["*"], allow_credentials=False, expose_headers=["x-dragoman-backend",
                                                                                 "x-dragoman-attempts"]),
    ]
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                    exception_handlers={HTTPException: _http_exception,  # type: ignore[dict-item]
                                        Exception: _internal_error})
    app.state.services = services
    app.state.max_body_bytes = config.server.max_body_bytes
    return app


async def _internal_error(request: Request, exc: Exception) -> Response:
    """A bug: logged with its traceback, answered as a JSON 500 (no details leak to the client)."""
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    body = {"error": {"message": "internal error in dragoman; see the server log", "type": "server_error",
                      "param": None, "code": None}}
    return json_response(body, status=500)


async def _http_exception(request: Request, exc: HTTPException) -> Response:
    """Unknown routes and methods answer in a JSON error shape, not Starlette's plain text."""
    message = "route not found" if exc.status_code == 404 else str(exc.detail)
    body: dict[str, Any] = {"error": {"message": f"{message}: {request.method} {request.url.path}",
                                      "type": "invalid_request_error", "param": None, "code": None}}
    return json_response(body, status=exc.status_code, headers=exc.headers)
