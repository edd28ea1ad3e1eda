"""Assembly: check the config, build every part in the app's lifespan, serve the routes over them.

Nothing is global: ``create_app`` builds the backends and checks what needs no I/O; the lifespan
builds everything else (:mod:`dragoman.services`) and hands each part its dependencies, so a
test can build as many apps as it likes.
"""

from __future__ import annotations

import contextlib
import logging
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.datastructures import State
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from dragoman.admin.probe_access import ProbeAccess
from dragoman.admin.routes import AdminSite, admin_auth
from dragoman.admin.secret_key import SecretKeySource
from dragoman.admin.security import AdminAuth
from dragoman.backends.base import Backend, BackendDeps
from dragoman.backends.fetch import SafeImageFetcher
from dragoman.backends.types import BackendTypes, EntryError
from dragoman.config import Config, ConfigError
from dragoman.core.dialect import Dialect
from dragoman.core.ids import random_id
from dragoman.core.service import GatewayService
from dragoman.dialects.anthropic.routes import AnthropicDialect
from dragoman.dialects.anthropic.routes import error_response as anthropic_error
from dragoman.dialects.ollama.routes import OllamaDialect
from dragoman.dialects.ollama.routes import error_response as ollama_error
from dragoman.dialects.openai.routes import OpenAIDialect
from dragoman.dialects.openai.routes import error_response as openai_error
from dragoman.dialects.responses.routes import ResponsesDialect
from dragoman.errors import ErrorKind, GatewayError
from dragoman.extras import config_requirements, require
from dragoman.gateway.health import readiness
from dragoman.request_log import RequestLog
from dragoman.services import AppServices, build_routing, global_timeouts, model_specs, open_services
from dragoman.serving.answers import internal_error, json_response
from dragoman.serving.dispatch import CORSWhenOrigin, GenerationRoutes
from dragoman.serving.endpoints import Endpoint
from dragoman.serving.handler import GenerationHandler
from dragoman.tracing import Tracing

__all__ = ["AppServices", "DialectFactory", "DragomanApp", "build_backends", "build_routing", "builtin_dialects",
           "create_app", "global_timeouts", "model_specs"]

log = logging.getLogger("dragoman")

ReadyHook = Callable[[AppServices], Awaitable[None]]
# A dialect, built over the running gateway (the ``dialects=`` of :func:`create_app`).
DialectFactory = Callable[[GatewayService], Dialect]


def builtin_dialects(services: AppServices) -> tuple[Dialect, ...]:
    """The dialects dragoman speaks, one line each; a new dialect is its package and a line here."""
    gateway, responses = services.gateway, services.config.responses
    return (
        OpenAIDialect(gateway),
        AnthropicDialect(gateway),
        OllamaDialect(gateway),
        ResponsesDialect(gateway, services.response_store, services.background, hosted_tools=responses.hosted_tools),
    )


def build_backends(config: Config, deps: BackendDeps, types: BackendTypes | None = None) -> list[Backend]:
    """Every configured backend, or a ``ConfigError`` naming the entry and the problem."""
    source = _source(config)
    types = types or BackendTypes()
    backends = []
    for index, entry in enumerate(config.backends):
        where = f"{source}: backends[{index}] ({entry.name})"
        try:
            backend = types.build(entry.name, entry.type, entry.settings, deps)
        except EntryError as exc:
            raise ConfigError(exc.at(where)) from exc
        require(backend.requirements(), where=f"{where}.")
        backends.append(backend)
    return backends


def _given(backends: Sequence[Backend], config: Config) -> list[Backend]:
    """Backends built in code, checked against the config's: names are unique, one is needed."""
    names = {entry.name for entry in config.backends}
    for backend in backends:
        if not isinstance(backend, Backend):
            raise ConfigError(f"create_app(backends=...): {backend!r} is not a Backend")
        if backend.name in names:
            raise ConfigError(f"create_app(backends=...): the backend name {backend.name!r} is used twice")
        names.add(backend.name)
    if not names:
        raise ConfigError(f"{_source(config)}: at least one backend is required")
    return list(backends)


def _source(config: Config) -> str:
    return str(config.source) if config.source else "(built-in config)"


class GatewayApp(Starlette):
    """Starlette with :class:`GenerationRoutes` in front of its middleware stack.

    With ``trusted_proxies``, uvicorn's proxy-headers middleware goes in front of everything: a
    request from one of those addresses takes its client address (and scheme) from
    ``X-Forwarded-For``/``-Proto``, whatever server runs the app; from anyone else the headers are
    ignored. (``dragoman serve`` also tells uvicorn; doing it twice changes nothing.)
    """

    def __init__(self, *, generations: dict[str, GenerationHandler], cors: dict[str, Any],
                 trusted_proxies: list[str], tracing: Tracing | None = None, **kwargs: Any) -> None:
        self.generations = generations
        self.cors = cors
        self.trusted_proxies = trusted_proxies
        self.tracing = tracing
        super().__init__(**kwargs)

    def build_middleware_stack(self) -> ASGIApp:
        # The request log (and x-request-id, and the request's span) wraps every request.
        app: ASGIApp = RequestLog(GenerationRoutes(super().build_middleware_stack(), self.generations, **self.cors),
                                  tracing=self.tracing)
        if self.trusted_proxies:
            # uvicorn types scopes as TypedDicts, Starlette as plain mappings: the same ASGI app.
            app = ProxyHeadersMiddleware(app, trusted_hosts=self.trusted_proxies)  # type: ignore[arg-type,assignment]
        return app


def create_app(config: Config, *, on_ready: ReadyHook | None = None, backends: Sequence[Backend] = (),
               backend_types: Mapping[str, type[Backend]] | None = None, tracer_provider: Any = None,
               dialects: Sequence[DialectFactory] = ()) -> DragomanApp:
    """The app for ``config``; what can be checked without I/O is checked here (a ``ConfigError``),
    everything else is built by its lifespan (see :class:`DragomanApp`). A program that embeds
    dragoman passes its own ``backends`` (built as ``cls(name, settings, deps)``; served beside the
    config's, not editable in the admin UI) and ``backend_types`` (classes that ``type:`` may name in
    the config and the admin UI, beside the installed ones). With ``tracer_provider`` (an
    OpenTelemetry one, see :mod:`dragoman.tracing`) it makes spans for every request, routing
    attempt and upstream call. ``dialects`` are served beside the built-in ones
    (:func:`builtin_dialects`): each builds a :class:`~dragoman.core.dialect.Dialect` over the gateway."""
    require(config_requirements(config), where=f"{_source(config)}: ")  # before anything imports them
    tracing = Tracing(tracer_provider) if tracer_provider is not None else None
    images = config.images
    fetcher = SafeImageFetcher(allow_hosts=images.allow_hosts, max_bytes=images.max_bytes, timeout=images.timeout,
                               allow_private=images.allow_private)
    deps = BackendDeps(config_dir=config.config_dir, image_fetcher=fetcher)
    types = BackendTypes(backend_types)
    given = _given(backends, config)
    built = build_backends(config, deps, types)
    secret_key = SecretKeySource(config)  # a bad DRAGOMAN_SECRET_KEY stops the start here
    return DragomanApp(config, backends=built, deps=deps, secret_key=secret_key, auth=admin_auth(config),
                       on_ready=on_ready, types=types, given=given, tracing=tracing,
                       dialects=dialects)


class DragomanApp:
    """The ASGI app: one lifespan builds every service (:func:`dragoman.services.open_services`, on
    one ``AsyncExitStack``) and the routes over them, and only then serves.

    Before start-up completes (or when run without a lifespan) and once shutdown begins, every
    request is answered 503 with ``Retry-After`` in its client's dialect: nothing is served
    half-built, so no request passes before the key check exists. One app serves one lifespan
    (its backends, built here, are closed at its end).
    """

    def __init__(self, config: Config, *, backends: list[Backend], deps: BackendDeps, secret_key: SecretKeySource,
                 auth: AdminAuth, on_ready: ReadyHook | None = None, types: BackendTypes | None = None,
                 given: Sequence[Backend] = (), tracing: Tracing | None = None,
                 dialects: Sequence[DialectFactory] = ()) -> None:
        self.config = config
        self.dialects = tuple(dialects)  # the program's, served beside the built-in ones
        self.backends = backends  # the config file's (the running ones: app.state.services.backends)
        self._deps = deps
        self._secret_key = secret_key
        self._auth = auth
        self._on_ready = on_ready
        self._types = types or BackendTypes()
        self._given = list(given)  # built in code (create_app(backends=)), served beside the file's
        self._tracing = tracing
        self.state = State()  # ``services`` while running
        self._serving: GatewayApp | None = None
        self._phase = "starting"

    @property
    def routes(self) -> list[BaseRoute]:
        """The routes being served (none before start-up completes)."""
        return self._serving.routes if self._serving is not None else []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        serving = self._serving
        if serving is not None and scope["type"] != "lifespan":
            await serving(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await _not_serving(scope, self._phase)(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        await receive()  # lifespan.startup
        try:
            async with contextlib.AsyncExitStack() as stack:
                try:
                    services = await open_services(stack, self.config, self.backends, self._deps,
                                                   self._secret_key, self._auth, types=self._types,
                                                   given=self._given, tracing=self._tracing)
                    self._serving = serving_app(services, self.dialects)
                    self.state.services = services
                    self._phase = "running"
                    if self._on_ready is not None:
                        await self._on_ready(services)
                except BaseException:
                    self._serving, self._phase = None, "starting"
                    await send({"type": "lifespan.startup.failed", "message": traceback.format_exc()})
                    raise
                await send({"type": "lifespan.startup.complete"})
                try:
                    await receive()  # lifespan.shutdown
                finally:
                    self._serving, self._phase = None, "stopping"
        except BaseException:
            if self._phase == "stopping":
                await send({"type": "lifespan.shutdown.failed", "message": traceback.format_exc()})
            raise
        await send({"type": "lifespan.shutdown.complete"})


def _not_serving(scope: Scope, phase: str) -> Response:
    """The answer while not serving: 503 in the dialect the path belongs to."""
    path: str = scope.get("path", "")
    if path in ("/health", "/health/ready"):
        return json_response({"status": phase}, status=503, headers={"retry-after": "1"})
    error = GatewayError(ErrorKind.OVERLOADED, f"dragoman is {phase}; try again in a moment", status=503,
                         retry_after=1)
    if path.startswith("/api/"):
        return ollama_error(error)
    if path.startswith("/v1/messages"):
        return anthropic_error(error, random_id("req_", 20))
    return openai_error(error)


def serving_app(services: AppServices, dialects: Sequence[DialectFactory] = ()) -> GatewayApp:
    """The routes over the running ``services`` (the built-in dialects and the program's
    ``dialects``), behind their middleware."""
    config, gateway, metrics, health_monitor = services.config, services.gateway, services.metrics, services.health

    async def root(request: Request) -> Response:
        # Ollama clients probe HEAD / and check this exact body.
        return PlainTextResponse("Ollama is running")

    async def health(request: Request) -> Response:
        return json_response({"status": "ok"})

    async def metrics_route(request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def health_ready(request: Request) -> Response:
        ok, body = await readiness(True, health_monitor, services.readiness_checks)
        return json_response(body, status=200 if ok else 503)

    admin = AdminSite(services)
    probes = ProbeAccess(config.metrics_auth, keys=lambda: services.keys, admin=admin)
    routes: list[BaseRoute] = [
        Route("/", root, methods=["GET", "HEAD"]),
        Route("/health", health, methods=["GET", "HEAD"]),  # liveness: open, it tells nothing
        Route("/health/ready", probes.guard(health_ready), methods=["GET"]),
        Route("/metrics", probes.guard(metrics_route), methods=["GET"]),
    ]
    server = config.server
    built = [*builtin_dialects(services), *(factory(gateway) for factory in dialects)]
    generations: dict[str, GenerationHandler] = {}
    for dialect in built:
        for route in dialect.generation_routes():
            if route.path in generations:
                raise ConfigError(f"dialect {dialect.name!r}: POST {route.path} is already served by dialect "
                                  f"{generations[route.path].dialect.name!r}")
            generations[route.path] = GenerationHandler(gateway, dialect, route.operation,
                                                        body_limit=server.max_body_bytes,
                                                        body_timeout=server.body_timeout)
    routes += _models_routes(built)
    for dialect in built:
        routes += dialect.routes()
    # Generation requests never reach the router (GenerationRoutes serves them); their routes here
    # answer other methods with a 405.
    routes += [Route(path, handler, methods=["POST"]) for path, handler in generations.items()]
    routes += admin.routes()
    cors: dict[str, Any] = {
        "allow_origins": server.cors_origins, "allow_methods": ["*"], "allow_headers": ["*"],
        "allow_credentials": False,
        "expose_headers": ["x-dragoman-backend", "x-dragoman-attempts", "x-dragoman-overhead-ms", "x-request-id",
                           "x-dragoman-dropped-tools"]}
    middleware = [Middleware(CORSWhenOrigin, **cors)]  # type: ignore[arg-type]  # a plain ASGI wrapper
    app = GatewayApp(generations=generations, cors=cors, trusted_proxies=server.trusted_proxies,
                     tracing=services.tracing, routes=routes, middleware=middleware,
                     exception_handlers={HTTPException: _http_exception,  # type: ignore[dict-item]
                                         Exception: _internal_error})
    app.state.max_body_bytes = server.max_body_bytes
    app.state.body_timeout = server.body_timeout
    return app


def _models_routes(dialects: Sequence[Dialect]) -> list[BaseRoute]:
    """``GET /v1/models`` is both the OpenAI and the Anthropic dialect's route: the Anthropic SDK
    marks its calls with ``anthropic-version``."""
    openai = next((d for d in dialects if isinstance(d, OpenAIDialect)), None)
    anthropic = next((d for d in dialects if isinstance(d, AnthropicDialect)), None)
    if openai is None or anthropic is None:
        return []
    return [
        Route("/v1/models", _by_header("anthropic-version", anthropic.endpoint(anthropic.list_models),
                                       openai.endpoint(openai.list_models)), methods=["GET"]),
        Route("/v1/models/{model_id:path}", _by_header("anthropic-version", anthropic.endpoint(
            anthropic.retrieve_model), openai.endpoint(openai.retrieve_model)), methods=["GET"]),
    ]


def _by_header(header: str, present: Endpoint, absent: Endpoint) -> Endpoint:
    """A handler that dispatches on whether the request carries ``header``."""
    async def dispatch(request: Request) -> Response:
        return await (present if header in request.headers else absent)(request)
    return dispatch


async def _internal_error(request: Request, exc: Exception) -> Response:
    """A bug: logged with its traceback, answered as a JSON 500 (no details leak to the client)."""
    return internal_error(request.method, request.url.path, exc)


async def _http_exception(request: Request, exc: HTTPException) -> Response:
    """Unknown routes and methods answer in a JSON error shape, not Starlette's plain text."""
    message = "route not found" if exc.status_code == 404 else str(exc.detail)
    body: dict[str, Any] = {"error": {"message": f"{message}: {request.method} {request.url.path}",
                                      "type": "invalid_request_error", "param": None, "code": None}}
    return json_response(body, status=exc.status_code, headers=exc.headers)
