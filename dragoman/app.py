"""Assembly: build every part from the config, wire them together, start and stop them.

Nothing is global: ``create_app`` builds the backends, the registry, the gateway and the
dialects and hands each its dependencies, so a test can build as many apps as it likes.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from dragoman.admin.probe_access import ProbeAccess
from dragoman.admin.routes import AdminSite
from dragoman.backends.base import TIMEOUT_NAMES, Backend, BackendDeps, Timeouts
from dragoman.backends.fetch import SafeImageFetcher
from dragoman.backends.registry import BackendTypes, EntryError
from dragoman.config import Config, ConfigError
from dragoman.control import ControlPlane, make_observer, open_control_plane
from dragoman.dialects.anthropic.routes import AnthropicDialect
from dragoman.dialects.common import json_response
from dragoman.dialects.ollama.routes import OllamaDialect
from dragoman.dialects.openai.routes import OpenAIDialect
from dragoman.dialects.responses.routes import ResponsesDialect
from dragoman.dialects.responses.store import ResponseStore
from dragoman.extras import config_requirements, require
from dragoman.gateway.balance import Balancer
from dragoman.gateway.cooldown import CooldownSettings, CooldownStore, cooldown_store
from dragoman.gateway.health import BackendHealth, HealthMonitor, ReadinessCheck, readiness
from dragoman.gateway.keys import KeyService
from dragoman.gateway.metrics import Metrics
from dragoman.gateway.registry import ModelRegistry
from dragoman.gateway.route import DeploymentSpec, ModelSpec
from dragoman.gateway.router import Router, RoutingSettings
from dragoman.gateway.store import Store
from dragoman.pipeline import Gateway
from dragoman.request_log import RequestLog
from dragoman.tracing import Tracing

log = logging.getLogger("dragoman")

HOT_PATHS = frozenset({"/v1/chat/completions", "/v1/messages", "/api/chat", "/api/generate", "/v1/completions",
                       "/v1/embeddings", "/api/embed", "/v1/responses"})

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
    # Routing and health (see build_routing).
    router: Router | None = None
    cooldowns: CooldownStore | None = None
    health: HealthMonitor | None = None
    # Latest background health check per backend (the monitor's own dict, kept up to date).
    backend_health: dict[str, BackendHealth] = field(default_factory=dict)
    # ``GET /health/ready`` runs these; each returns an error string, or None when fine.
    readiness_checks: list[ReadinessCheck] = field(default_factory=list)
    # Control plane (opened at start-up: the database is async).
    deps: BackendDeps | None = None
    backend_types: BackendTypes = field(default_factory=BackendTypes)
    given_backends: tuple[str, ...] = ()  # names of the backends built in code (create_app(backends=))
    store: Store | None = None
    keys: KeyService | None = None
    control: ControlPlane | None = None
    metrics: Metrics | None = None


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


def model_specs(config: Config) -> list[ModelSpec]:
    """``models:`` entries as the registry takes them, timeouts merged with the global ones."""
    base = global_timeouts(config)
    specs = []
    for model in config.models:
        timeouts = None
        if model.timeouts is not None:
            timeouts = base
            for name in TIMEOUT_NAMES:
                seconds = getattr(model.timeouts, name)
                if seconds is not None:
                    timeouts = timeouts.with_limit(name, seconds, f"models[{model.name!r}].timeouts.{name}")
        specs.append(ModelSpec(
            name=model.name,
            deployments=tuple(DeploymentSpec(d.target, d.weight, d.priority) for d in model.deployments),
            strategy=model.strategy, fallbacks=tuple(model.fallbacks), timeouts=timeouts, retries=model.retries))
    return specs


def global_timeouts(config: Config) -> Timeouts:
    t = config.timeouts
    return Timeouts(t.connect, t.first_byte, t.idle, t.total)


def build_routing(config: Config, tracing: Tracing | None = None) -> tuple[Router, CooldownStore]:
    """The router and its cooldown store (shared through Redis when ``redis:`` is set)."""
    r = config.routing
    cooldowns = cooldown_store(CooldownSettings(r.cooldown.failures, r.cooldown.window, r.cooldown.period),
                               config.redis, prefix=r.cooldown.key_prefix)
    settings = RoutingSettings(strategy=r.strategy, retries=r.retries, backoff=r.backoff,
                               backoff_max=r.backoff_max, max_retry_after=r.max_retry_after)
    return Router(settings, cooldowns=cooldowns, balancer=Balancer(), tracing=tracing), cooldowns


Endpoint = Callable[[Request], Awaitable[Response]]


def _has_origin(scope: Scope) -> bool:
    """A browser's request (``Origin`` set): the only kind CORS applies to."""
    return any(name == b"origin" for name, _ in scope["headers"])


class HotRoutes:
    """The generation endpoints, dispatched straight to their handlers, ahead of Starlette.

    They are nearly every request a gateway serves; Starlette's router, error and exception
    middleware and per-message send wrappers cost more than the handler's own bookkeeping. The
    handlers already answer every ``GatewayError`` in their dialect; anything else becomes the
    JSON 500. Every other request (other paths, and browsers' requests, which need CORS) goes
    through Starlette's whole stack, where the same endpoints are routed as usual.
    """

    def __init__(self, app: ASGIApp, endpoints: dict[tuple[str, str], Endpoint]) -> None:
        self.app = app
        self.endpoints = endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self.endpoints.get((scope.get("method", ""), scope.get("path", ""))) \
            if scope["type"] == "http" else None
        if endpoint is None or _has_origin(scope):
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive, send)
        try:
            response = await endpoint(request)
        except Exception as exc:  # noqa: BLE001 - a bug: logged with its traceback, a JSON 500 to the client
            response = await _internal_error(request, exc)
        await response(scope, receive, send)


class CORSWhenOrigin:
    """CORS for requests that carry ``Origin`` (browsers); every other request skips the work."""

    def __init__(self, app: ASGIApp, **options: Any) -> None:
        self.app = app
        self.cors = CORSMiddleware(app, **options)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _has_origin(scope):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)


class GatewayApp(Starlette):
    """Starlette with :class:`HotRoutes` in front of its middleware stack.

    With ``trusted_proxies``, uvicorn's proxy-headers middleware goes in front of everything: a
    request from one of those addresses takes its client address (and scheme) from
    ``X-Forwarded-For``/``-Proto``, whatever server runs the app; from anyone else the headers are
    ignored. (``dragoman serve`` also tells uvicorn; doing it twice changes nothing.)
    """

    def __init__(self, *, hot_endpoints: dict[tuple[str, str], Endpoint], trusted_proxies: list[str],
                 tracing: Tracing | None = None, **kwargs: Any) -> None:
        self.hot_endpoints = hot_endpoints
        self.trusted_proxies = trusted_proxies
        self.tracing = tracing
        super().__init__(**kwargs)

    def build_middleware_stack(self) -> ASGIApp:
        # The request log (and x-request-id, and the request's span) wraps every request, hot or not.
        app: ASGIApp = RequestLog(HotRoutes(super().build_middleware_stack(), self.hot_endpoints),
                                  tracing=self.tracing)
        if self.trusted_proxies:
            # uvicorn types scopes as TypedDicts, Starlette as plain mappings: the same ASGI app.
            app = ProxyHeadersMiddleware(app, trusted_hosts=self.trusted_proxies)  # type: ignore[arg-type,assignment]
        return app


def create_app(config: Config, *, on_ready: ReadyHook | None = None, backends: Sequence[Backend] = (),
               backend_types: Mapping[str, type[Backend]] | None = None, tracer_provider: Any = None) -> Starlette:
    """The gateway for ``config``. A program that embeds dragoman passes its own ``backends``
    (built as ``cls(name, settings, deps)``; served beside the config's) and ``backend_types``
    (classes that ``type:`` may name in the config and the admin UI, beside the installed ones).
    With ``tracer_provider`` (an OpenTelemetry one, see :mod:`dragoman.tracing`) it makes spans for
    every request, routing attempt and upstream call."""
    require(config_requirements(config), where=f"{_source(config)}: ")  # before anything imports them
    tracing = Tracing(tracer_provider) if tracer_provider is not None else None
    images = config.images
    fetcher = SafeImageFetcher(allow_hosts=images.allow_hosts, max_bytes=images.max_bytes, timeout=images.timeout,
                               allow_private=images.allow_private)
    deps = BackendDeps(config_dir=config.config_dir, image_fetcher=fetcher)
    types = BackendTypes(backend_types)
    given = _given(backends, config)
    backends = [*build_backends(config, deps, types), *given]
    registry = ModelRegistry(backends, config.aliases, refresh_seconds=config.model_refresh_seconds,
                             models=model_specs(config))
    timeouts = global_timeouts(config)
    router, cooldowns = build_routing(config, tracing)
    gateway = Gateway(registry, router=router, overrides=config.overrides, timeouts=timeouts,
                      forward_keys=config.auth.mode != "keys", pull_backend=config.pull.backend,
                      blob_root=lambda: config.writable_data_dir() / "blobs")
    health_monitor = HealthMonitor(backends, interval=config.routing.health_interval,
                                   model_count=registry.model_count)
    services = AppServices(config=config, backends=backends, registry=registry, gateway=gateway,
                           router=router, cooldowns=cooldowns, health=health_monitor,
                           backend_health=health_monitor.results, deps=deps, backend_types=types,
                           given_backends=tuple(b.name for b in given))

    metrics = Metrics()
    services.metrics = metrics
    gateway.metrics = metrics

    async def open_control() -> None:
        control = await open_control_plane(config, metrics)
        services.control, services.store, services.keys = control, control.store, control.keys
        gateway.access = control.access
        gateway.prices = control.prices
        gateway.observers.append(make_observer(control.recorder, metrics))
        services.readiness_checks.append(control.store.check)
        await gateway.catalog.restore(control.settings)

    async def close_control() -> None:
        if services.control is not None:
            await services.control.aclose()

    services.startup_hooks.append(open_control)
    services.shutdown_hooks.append(close_control)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        started: list[Backend] = []
        try:
            for backend in backends:
                await backend.start()
                started.append(backend)
            for hook in services.startup_hooks:
                await hook()
            await cooldowns.start()
            await registry.refresh(force=True)
            await health_monitor.check_all()
            health_monitor.start()
            services.ready = True
            if on_ready is not None:
                await on_ready(services)
            yield
        finally:
            services.ready = False
            await health_monitor.aclose()
            try:
                await cooldowns.aclose()
            except Exception:
                log.exception("closing the cooldown store failed")
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

    async def metrics_route(request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def health_ready(request: Request) -> Response:
        ok, body = await readiness(services.ready, health_monitor, services.readiness_checks)
        return json_response(body, status=200 if ok else 503)

    admin = AdminSite(services)
    probes = ProbeAccess(config.metrics_auth, keys=lambda: services.keys, admin=admin)
    routes: list[BaseRoute] = [
        Route("/", root, methods=["GET", "HEAD"]),
        Route("/health", health, methods=["GET", "HEAD"]),  # liveness: open, it tells nothing
        Route("/health/ready", probes.guard(health_ready), methods=["GET"]),
        Route("/metrics", probes.guard(metrics_route), methods=["GET"]),
    ]
    openai_dialect, anthropic_dialect = OpenAIDialect(gateway), AnthropicDialect(gateway)
    routes += anthropic_dialect.routes()
    # GET /v1/models is both dialects' route: the Anthropic SDK marks its calls with anthropic-version.
    routes += [
        Route("/v1/models", _by_header("anthropic-version", anthropic_dialect.list_models,
                                       openai_dialect.list_models), methods=["GET"]),
        Route("/v1/models/{model_id:path}", _by_header("anthropic-version", anthropic_dialect.retrieve_model,
                                                       openai_dialect.retrieve_model), methods=["GET"]),
    ]
    routes += openai_dialect.routes()
    routes += OllamaDialect(gateway).routes()
    responses = config.responses
    routes += ResponsesDialect(gateway, ResponseStore(responses.store_entries, responses.store_bytes),
                               hosted_tools=responses.hosted_tools).routes()
    routes += admin.routes()
    # Routes are matched in order: the generation endpoints, hit on nearly every request, go first.
    routes.sort(key=lambda route: getattr(route, "path", "") not in HOT_PATHS)
    hot: dict[tuple[str, str], Endpoint] = {
        ("POST", route.path): route.endpoint for route in routes
        if isinstance(route, Route) and route.path in HOT_PATHS and "POST" in (route.methods or ())}

    middleware = [
        Middleware(CORSWhenOrigin,  # type: ignore[arg-type]  # a plain ASGI wrapper; Starlette's stub is narrow
                   allow_origins=config.server.cors_origins, allow_methods=["*"], allow_headers=["*"],
                   allow_credentials=False,
                   expose_headers=["x-dragoman-backend", "x-dragoman-attempts", "x-dragoman-overhead-ms",
                                   "x-request-id", "x-dragoman-dropped-tools"]),
    ]
    app = GatewayApp(hot_endpoints=hot, trusted_proxies=config.server.trusted_proxies, tracing=tracing, routes=routes,
                     middleware=middleware, lifespan=lifespan,
                     exception_handlers={HTTPException: _http_exception,  # type: ignore[dict-item]
                                         Exception: _internal_error})
    app.state.services = services
    app.state.max_body_bytes = config.server.max_body_bytes
    app.state.body_timeout = config.server.body_timeout
    return app


def _by_header(header: str, present: Callable[[Request], Awaitable[Response]],
               absent: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """A handler that dispatches on whether the request carries ``header``."""
    async def dispatch(request: Request) -> Response:
        return await (present if header in request.headers else absent)(request)
    return dispatch


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
