"""Cooldowns: a deployment that keeps failing is skipped for a while, then probed.

A circuit breaker per deployment (``<backend>/<model>``)::

    closed --``failures`` within ``window`` s--> open (skipped for ``period`` s) --> half-open
    half-open: one request (the probe) goes through; success closes, failure opens again.

Failures are what the router counts as the deployment's fault: connect errors, 429, 5xx and
timeouts, before or after the first event; never an upstream's 4xx answer to a bad request, nor
a client going away. Failures count within the window whatever succeeded between them, so a
success costs nothing (no write) unless it ends a probe.

:class:`MemoryCooldownStore` keeps the state per process. :class:`RedisCooldownStore` shares it
between every instance on one Redis: expiries are Redis's own, the failure window is counted on
Redis time in one Lua script. When Redis fails, that store falls back to its memory twin for
``retry_interval`` seconds (with a throttled warning), then tries Redis again: cooldowns are an
optimisation, never a reason to refuse a request. A burst waits its turn for the store's Redis
connections; a call whose wait runs out uses memory for once, and is not taken for Redis failing.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Protocol, TypeVar

from dragoman.gateway.logutil import ThrottledLog
from dragoman.gateway.redis_client import DEFAULT_POOL_WAIT, connect_redis
from dragoman.gateway.redis_gate import RedisBusy, RedisGate

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from dragoman.config import RedisConfig

log = logging.getLogger("dragoman.cooldown")

T = TypeVar("T")


@dataclass(slots=True, frozen=True)
class CooldownSettings:
    failures: int = 3  # failures within ``window`` that open the breaker
    window: float = 60.0  # seconds
    period: float = 30.0  # seconds a deployment is skipped before it is probed

    @property
    def forget_after(self) -> float:
        """How long an unprobed half-open deployment stays marked (then it is simply closed)."""
        return 10 * self.period + self.window


class State(Enum):
    CLOSED = "closed"
    OPEN = "open"  # skipped (also while another request probes it)
    HALF_OPEN = "half_open"  # the next request may probe it (``try_probe``)


@dataclass(slots=True, frozen=True)
class Status:
    state: State
    retry_in: float = 0.0  # seconds until an open deployment may be probed


class CooldownStore(Protocol):
    settings: CooldownSettings

    async def start(self) -> None: ...

    async def check(self, ids: Sequence[str]) -> dict[str, Status]:
        """The status of each id that is not closed (absent ids are closed)."""

    async def try_probe(self, deployment: str) -> bool:
        """Claim the single probe of a half-open deployment; False when another request has it."""

    async def record_failure(self, deployment: str) -> bool:
        """Count a failure; True when it opened the breaker."""

    async def record_success(self, deployment: str) -> None:
        """A probe succeeded: close the breaker."""

    async def aclose(self) -> None: ...


@dataclass(slots=True)
class _Entry:
    failures: deque[float] = field(default_factory=deque)
    open_until: float | None = None  # set when tripped; stays (in the past) while half-open
    probe_until: float = 0.0  # a probe is in flight until then


class MemoryCooldownStore:
    """Per-process breaker state (see the module docstring)."""

    def __init__(self, settings: CooldownSettings | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings or CooldownSettings()
        self._clock = clock
        self._entries: dict[str, _Entry] = {}

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def check(self, ids: Sequence[str]) -> dict[str, Status]:
        if not self._entries:
            return {}
        now = self._clock()
        out: dict[str, Status] = {}
        for deployment in ids:
            entry = self._entries.get(deployment)
            if entry is None or entry.open_until is None:
                continue
            if now < entry.open_until:
                out[deployment] = Status(State.OPEN, entry.open_until - now)
            elif now - entry.open_until > self.settings.forget_after:
                entry.open_until = None
            elif now < entry.probe_until:
                out[deployment] = Status(State.OPEN, entry.probe_until - now)
            else:
                out[deployment] = Status(State.HALF_OPEN)
        return out

    async def try_probe(self, deployment: str) -> bool:
        entry = self._entries.get(deployment)
        now = self._clock()
        if entry is None or entry.open_until is None or now < entry.open_until:
            return entry is None or entry.open_until is None  # closed: nothing to claim
        if now < entry.probe_until:
            return False
        entry.probe_until = now + self.settings.period
        return True

    async def record_failure(self, deployment: str) -> bool:
        settings = self.settings
        now = self._clock()
        entry = self._entries.setdefault(deployment, _Entry())
        if entry.open_until is not None:
            if now < entry.open_until:
                return False  # already open: late failures of requests that were in flight
            entry.open_until, entry.probe_until = now + settings.period, 0.0  # the probe failed
            return True
        failures = entry.failures
        failures.append(now)
        while failures and failures[0] <= now - settings.window:
            failures.popleft()
        if len(failures) >= settings.failures:
            failures.clear()
            entry.open_until = now + settings.period
            return True
        return False

    async def record_success(self, deployment: str) -> None:
        entry = self._entries.get(deployment)
        if entry is not None and entry.open_until is not None and self._clock() >= entry.open_until:
            entry.open_until, entry.probe_until = None, 0.0
            entry.failures.clear()


# KEYS: fails (zset), open, tripped, probe. ARGV: window ms, threshold, period ms, tripped ttl ms, member.
# Returns 1 when this failure opened the breaker.
_FAIL_LUA = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
  redis.call('SET', KEYS[3], '1', 'PX', ARGV[4])
  redis.call('DEL', KEYS[4])
  return 1
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[1])
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
  redis.call('SET', KEYS[3], '1', 'PX', ARGV[4])
  return 1
end
return 0
"""


class RedisCooldownStore:
    """Breaker state shared through Redis; memory while Redis is unreachable.

    Keys per deployment (``{id}`` is a Redis Cluster hash tag): ``<prefix>{id}:fails`` (failure
    times), ``:open`` (exists while skipped; expires after ``period``), ``:tripped`` (half-open
    once ``:open`` is gone), ``:probe`` (the probe in flight)."""

    def __init__(self, redis: Redis, settings: CooldownSettings | None = None, *,
                 prefix: str = "dragoman:cooldown:", retry_interval: float = 5.0,
                 max_inflight: int | None = None, pool_wait: float = DEFAULT_POOL_WAIT, timeout: float = 0.5,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings or CooldownSettings()
        self.memory = MemoryCooldownStore(self.settings, clock=clock)
        self._redis = redis
        self._prefix = prefix
        self._retry_interval = retry_interval
        self._clock = clock
        self._down_until = 0.0
        self._warn = ThrottledLog(log, interval=30.0)
        self._busy_warn = ThrottledLog(log, interval=30.0)
        self._fail = redis.register_script(_FAIL_LUA)
        # One turn per pooled connection (this store owns its client): a call never waits for one.
        self._gate = RedisGate(max_inflight or redis.connection_pool.max_connections, timeout=timeout)
        self._pool_wait = pool_wait

    def _keys(self, deployment: str) -> tuple[str, str, str, str]:
        base = f"{self._prefix}{{{deployment}}}"
        return f"{base}:fails", f"{base}:open", f"{base}:tripped", f"{base}:probe"

    @property
    def using_redis(self) -> bool:
        return self._clock() >= self._down_until

    async def _either(self, shared: Callable[[], Awaitable[T]], local: Callable[[], Awaitable[T]]) -> T:
        from redis.exceptions import RedisError

        if self._clock() < self._down_until:
            return await local()
        try:
            async with self._gate.turn(self._pool_wait):
                return await self._gate.reply(shared())
        except RedisBusy:
            self._busy_warn(logging.WARNING, "cooldowns: no Redis connection free within %.1fs; "
                            "using memory for this request", self._pool_wait)
            return await local()
        except (RedisError, OSError, TimeoutError) as exc:
            self._down_until = self._clock() + self._retry_interval
            self._warn(logging.WARNING, "cooldowns: Redis unavailable (%s); keeping them in memory for now", exc)
            return await local()

    async def start(self) -> None:
        async def ping() -> None:
            await self._redis.ping()

        async def none() -> None:
            return None

        await self._either(ping, none)

    async def aclose(self) -> None:
        await self._redis.aclose()

    async def check(self, ids: Sequence[str]) -> dict[str, Status]:
        async def shared() -> dict[str, Status]:
            async with self._redis.pipeline(transaction=False) as pipe:
                for deployment in ids:
                    _, open_key, tripped, probe = self._keys(deployment)
                    pipe.pttl(open_key)
                    pipe.exists(tripped)
                    pipe.pttl(probe)
                replies = await pipe.execute()
            out: dict[str, Status] = {}
            for i, deployment in enumerate(ids):
                open_ttl, tripped, probe_ttl = replies[3 * i: 3 * i + 3]
                if int(open_ttl) > 0:
                    out[deployment] = Status(State.OPEN, int(open_ttl) / 1000)
                elif int(tripped):
                    out[deployment] = (Status(State.OPEN, int(probe_ttl) / 1000) if int(probe_ttl) > 0
                                       else Status(State.HALF_OPEN))
            return out

        return await self._either(shared, lambda: self.memory.check(ids))

    async def try_probe(self, deployment: str) -> bool:
        async def shared() -> bool:
            claimed = await self._redis.set(self._keys(deployment)[3], "1", nx=True,
                                            px=max(1, int(self.settings.period * 1000)))
            return bool(claimed)

        return await self._either(shared, lambda: self.memory.try_probe(deployment))

    async def record_failure(self, deployment: str) -> bool:
        settings = self.settings

        async def shared() -> bool:
            opened = await self._fail(keys=list(self._keys(deployment)), args=[
                max(1, int(settings.window * 1000)), settings.failures, max(1, int(settings.period * 1000)),
                max(1, int((settings.period + settings.forget_after) * 1000)), secrets.token_hex(8)])
            return bool(int(opened))

        return await self._either(shared, lambda: self.memory.record_failure(deployment))

    async def record_success(self, deployment: str) -> None:
        async def shared() -> None:
            fails, _, tripped, probe = self._keys(deployment)
            await self._redis.delete(fails, tripped, probe)

        await self._either(shared, lambda: self.memory.record_success(deployment))


def cooldown_store(settings: CooldownSettings, redis: RedisConfig | None, *,
                   prefix: str = "dragoman:cooldown:") -> CooldownStore:
    """Memory without ``redis``, else Redis (which needs the ``redis`` package) on a pool of its own."""
    if redis is None:
        return MemoryCooldownStore(settings)
    client = connect_redis(redis.url, max_connections=redis.max_connections, pool_wait=redis.pool_wait)
    return RedisCooldownStore(client, settings, prefix=prefix, pool_wait=redis.pool_wait)
