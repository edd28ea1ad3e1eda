"""The control plane assembled: storage, keys, limits, usage and metrics around the gateway.

Opened in the app's lifespan (the database is async), closed in reverse order so the usage
queue is flushed before the database goes away. The request path never waits on the
database: keys are cached, usage is queued, limits count in memory or Redis.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dragoman.config import Config
from dragoman.errors import ErrorKind
from dragoman.gateway.auth import AccessPolicy, AnonymousAccess, KeyAccess
from dragoman.gateway.keys import KeyService, Principal
from dragoman.gateway.limits import Limiter, MemoryLimiter, RateLimits, RedisLimiter, Reserver
from dragoman.gateway.metrics import Metrics
from dragoman.gateway.outcome import CallOutcome
from dragoman.gateway.redis_client import connect_redis
from dragoman.gateway.settings import SettingsStore
from dragoman.gateway.static_keys import static_keys
from dragoman.gateway.store import Store
from dragoman.gateway.usage import PriceTable, UsageRecord, UsageRecorder
from dragoman.gateway.usage_store import UsagePruner, UsageStore

if TYPE_CHECKING:
    from redis.asyncio import Redis  # optional (dragoman[redis]): imported where a client is made

log = logging.getLogger("dragoman.control")

# Connections of the control plane's Redis pool kept from the limiter for the key service: its
# invalidation listener holds one, its broadcasts take another.
KEY_SERVICE_CONNECTIONS = 2

UPSTREAM_KINDS = frozenset({ErrorKind.UPSTREAM_ERROR.value, ErrorKind.UPSTREAM_UNAVAILABLE.value,
                            ErrorKind.OVERLOADED.value, ErrorKind.TIMEOUT.value})


@dataclass(slots=True)
class ControlPlane:
    store: Store
    keys: KeyService
    usage_store: UsageStore
    recorder: UsageRecorder
    pruner: UsagePruner
    settings: SettingsStore
    limiter: Limiter
    access: AccessPolicy
    prices: PriceTable
    redis: Redis | None = None

    async def aclose(self) -> None:
        """Flush usage first, then stop background work, then the connections."""
        for closer in (self.recorder.aclose, self.pruner.aclose, self.keys.aclose):
            try:
                await closer()
            except Exception:
                log.exception("closing the control plane failed")
        if self.redis is not None:
            await self.redis.aclose()
        await self.store.aclose()


async def open_control_plane(config: Config, metrics: Metrics) -> ControlPlane:
    store = await Store.open(config.checked_database_url(), request_timeout=config.database_timeout)
    usage_store = UsageStore(store)
    prices = PriceTable(config.prices)
    reserver = Reserver(config.limits.reserve_tokens, config.limits.reserve_tokens_by_model, prices)
    model_limits = {glob: RateLimits(lim.rpm, lim.tpm, lim.max_parallel)
                    for glob, lim in config.limits.models.items()}
    redis: Redis | None = None
    limiter: Limiter
    if config.redis is not None:
        pool = config.redis
        redis = connect_redis(pool.url, max_connections=pool.max_connections, pool_wait=pool.pool_wait)
        limiter = RedisLimiter(redis, budget_source=usage_store, metrics=metrics, reserver=reserver,
                               model_limits=model_limits,
                               fail_open=config.limits.redis_failure == "open", pool_wait=pool.pool_wait,
                               max_inflight=pool.max_connections - KEY_SERVICE_CONNECTIONS)
    else:
        limiter = MemoryLimiter(budget_source=usage_store, metrics=metrics, reserver=reserver,
                                model_limits=model_limits)
    keys = KeyService(store, cache_ttl=config.auth.cache_ttl, redis=redis, static=static_keys(config))
    recorder = UsageRecorder(usage_store, max_queue=config.usage.queue_size, batch_size=config.usage.batch_size,
                             flush_interval=config.usage.flush_interval, prices=prices, metrics=metrics)
    pruner = UsagePruner(usage_store, retention_days=config.usage.retention_days)
    settings = SettingsStore(store)
    await keys.start()
    await recorder.start()
    await pruner.start()
    # Aliases, overrides and backends made in the admin UI are read by dragoman.admin.live right
    # after this (their one owner while the app runs).

    # Without keys, only per-model limits could apply, and none are configured: skip the limiter.
    access: AccessPolicy = (KeyAccess(keys, limiter) if config.auth.mode == "keys"
                            else AnonymousAccess(None, manage_models=config.auth.mode == "none"))
    return ControlPlane(store=store, keys=keys, usage_store=usage_store, recorder=recorder, pruner=pruner,
                        settings=settings, limiter=limiter, access=access, prices=prices, redis=redis)


def usage_record(outcome: CallOutcome) -> UsageRecord:
    """A finished call as the usage table keeps it: no prompt, no secret."""
    principal = outcome.ctx.principal
    key_id = (principal.key_id or None) if isinstance(principal, Principal) else None
    key_name = principal.name if isinstance(principal, Principal) and key_id else None
    upstream_model = outcome.target.split("/", 1)[1] if outcome.target and "/" in outcome.target else None
    usage = outcome.usage
    return UsageRecord(
        dialect=outcome.ctx.dialect, requested_model=outcome.requested_model, key_id=key_id, key_name=key_name,
        backend=outcome.backend, upstream_model=upstream_model, prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens, reasoning_tokens=usage.reasoning_tokens,
        tokens_estimated=usage.estimated, latency_ms=outcome.latency * 1000,
        ttft_ms=outcome.ttft * 1000 if outcome.ttft is not None else None, status=outcome.status,
        error_type=outcome.error_kind, attempts=max(outcome.attempts, 1), cancelled=outcome.cancelled,
        request_id=outcome.ctx.request_id or None,
    )


def make_observer(recorder: UsageRecorder, metrics: Metrics) -> Any:
    """The gateway's observer: one usage record and one metrics update per finished call."""

    def observe(outcome: CallOutcome) -> None:
        recorder.record(usage_record(outcome))
        metrics.observe_request(dialect=outcome.ctx.dialect, model=outcome.requested_model, status=outcome.status,
                                latency_s=outcome.latency, ttft_s=outcome.ttft,
                                prompt_tokens=outcome.usage.prompt_tokens,
                                completion_tokens=outcome.usage.completion_tokens)
        if outcome.error_kind in UPSTREAM_KINDS and outcome.backend:
            metrics.upstream_error(outcome.backend, outcome.error_kind or "")

    return observe
