"""Every running part of one app, built in one lifespan and closed in reverse order.

:func:`open_services` builds the parts in the order they depend on each other, on one
``AsyncExitStack``: each gets what it needs through its constructor and is never changed
afterwards. What an admin edits at run time (aliases, overrides, backends) is the catalog, which
only its owner (:class:`dragoman.admin.live.LiveSettings`) replaces.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from dragoman.admin.live import LiveSettings, open_admin_entries
from dragoman.admin.secret_key import SecretKeySource
from dragoman.admin.security import AdminAuth
from dragoman.backends.base import TIMEOUT_NAMES, Backend, BackendDeps, Timeouts
from dragoman.backends.types import BackendTypes
from dragoman.config import Config
from dragoman.dialects.responses.background import BackgroundResponses
from dragoman.gateway.balance import Balancer
from dragoman.gateway.catalog import LiveCatalog
from dragoman.gateway.control import ControlPlane, make_observer, open_control_plane
from dragoman.gateway.cooldown import CooldownSettings, CooldownStore, cooldown_store
from dragoman.gateway.deployments import DeploymentSpec, ModelSpec
from dragoman.gateway.gateway import Gateway
from dragoman.gateway.health import BackendHealth, HealthMonitor, ReadinessCheck
from dragoman.gateway.keys import KeyService
from dragoman.gateway.metrics import Metrics, process_metrics
from dragoman.gateway.registry import ModelRegistry
from dragoman.gateway.response_store import DatabaseResponseStore
from dragoman.gateway.router import Router, RoutingSettings
from dragoman.gateway.settings import SettingsStore
from dragoman.gateway.store import Store
from dragoman.tracing import Tracing

log = logging.getLogger("dragoman")


@dataclass(frozen=True, slots=True)
class AppServices:
    """Everything one running app owns; reachable as ``app.state.services`` while it runs."""

    config: Config
    live: LiveCatalog
    registry: ModelRegistry
    gateway: Gateway
    router: Router
    cooldowns: CooldownStore
    health: HealthMonitor
    control: ControlPlane
    metrics: Metrics
    settings: LiveSettings
    admin_auth: AdminAuth
    # ``GET /health/ready`` runs these; each returns an error string, or None when fine.
    readiness_checks: list[ReadinessCheck]
    deps: BackendDeps
    backend_types: BackendTypes
    # Stored Responses API answers, and the background responses generating (``/v1/responses``).
    response_store: DatabaseResponseStore
    background: BackgroundResponses
    given_backends: tuple[str, ...] = ()  # names of the backends built in code (create_app(backends=))
    tracing: Tracing | None = None

    @property
    def backends(self) -> list[Backend]:
        """The backends serving now."""
        return list(self.live.current.backends.values())

    @property
    def store(self) -> Store:
        return self.control.store

    @property
    def keys(self) -> KeyService:
        return self.control.keys

    @property
    def backend_health(self) -> dict[str, BackendHealth]:
        """Latest background health check per backend."""
        return self.health.results


async def open_services(stack: contextlib.AsyncExitStack, config: Config, backends: list[Backend],
                        deps: BackendDeps, secret_key: SecretKeySource, auth: AdminAuth, *,
                        types: BackendTypes | None = None, given: Sequence[Backend] = (),
                        tracing: Tracing | None = None) -> AppServices:
    """Open every part on ``stack`` (closed in reverse when it closes). ``backends`` are the
    config file's, built but not started; ``given`` the program's (``create_app(backends=)``)."""
    types = types or BackendTypes()
    metrics = process_metrics()
    stack.callback(metrics.close)
    control = await open_control_plane(config, metrics)
    stack.push_async_callback(control.aclose)
    response_store = DatabaseResponseStore(control.store, retention_days=config.responses.retention_days,
                                           max_bytes=config.responses.max_response_bytes)
    await response_store.start()
    stack.push_async_callback(response_store.aclose)
    box = await secret_key.open()
    resealed = await auth.setup(SettingsStore(control.store), box)
    admin, admin_resealed = await open_admin_entries(control.store, box)
    if resealed or admin_resealed:
        # The clear values are gone from the rows, not yet from the database file's free pages.
        await control.store.compact()
    catalog, entries = LiveSettings.initial_catalog(config, backends, admin, box, deps, types, given)
    live = await stack.enter_async_context(LiveCatalog.running(catalog))
    registry = ModelRegistry(live, refresh_seconds=config.model_refresh_seconds, models=model_specs(config))
    router, cooldowns = build_routing(config, tracing)
    await cooldowns.start()
    stack.push_async_callback(_quietly, cooldowns.aclose, "closing the cooldown store failed")
    gateway = Gateway(registry, router=router, access=control.access, timeouts=global_timeouts(config),
                      forward_keys=config.auth.mode != "keys", observers=[make_observer(control.recorder, metrics)],
                      metrics=metrics, prices=control.prices, pull_backend=config.pull.backend,
                      blob_root=lambda: config.writable_data_dir() / "blobs")
    await gateway.model_store.restore(SettingsStore(control.store))
    health = HealthMonitor(live, interval=config.routing.health_interval, model_count=registry.model_count)
    stack.push_async_callback(health.aclose)
    settings = LiveSettings(config=config, live=live, entries=entries, deps=deps, store=control.store, box=box,
                            health=health, types=types, given=given, seen=admin,
                            on_change=lambda: registry.refresh(force=True), models=gateway.model_store)
    stack.push_async_callback(settings.aclose)
    await registry.refresh(force=True)
    await health.check_all()
    health.start()
    server = config.server
    refresh = server.settings_refresh or (2.0 if server.worker_count > 1 else None)
    if refresh is not None:  # admin edits made through another worker or instance
        settings.watch(refresh, ("models", gateway.model_store.reload))
    # Closed first: the background responses still generating end while their backends are up.
    background = BackgroundResponses(response_store, limit=config.responses.max_background)
    stack.push_async_callback(background.aclose)
    return AppServices(config=config, live=live, registry=registry, gateway=gateway, router=router,
                       cooldowns=cooldowns, health=health, control=control, metrics=metrics, settings=settings,
                       admin_auth=auth, readiness_checks=[control.store.check], deps=deps, backend_types=types,
                       response_store=response_store, background=background,
                       given_backends=tuple(b.name for b in given), tracing=tracing)


async def _quietly(close: Callable[[], Awaitable[None]], message: str) -> None:
    try:
        await close()
    except Exception:
        log.exception(message)


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
