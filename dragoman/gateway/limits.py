"""Rate limits (rpm, tpm, parallel requests) and token/cost budgets, checked before a request.

``acquire(principal, model)`` admits a request or raises ``GatewayError(RATE_LIMITED)`` with
``retry_after``; the returned lease's ``release(tokens, cost)`` ends it, counting its tokens
toward tpm and the budget (tokens are only known afterwards, so a burst of concurrent requests
can overshoot tpm or a budget by what they use; the next request is refused).

Buckets: the key's own limits apply across all models, or per model with ``per_model=True``.
``model_limits`` (glob -> :class:`RateLimits`) adds limits that every caller of the matching
models shares, e.g. to stay under an upstream's quota; a glob's limits are shared by all the
models it matches (the first matching glob applies).

Windows slide over the last ``window`` seconds (60): rpm exactly, tpm exactly in memory and with
one-second resolution in Redis. Budgets are per UTC day or month; their starting figure for the
period is read once from the usage table (``BudgetSource``), then counted up as requests end.

:class:`MemoryLimiter` counts per process: with N instances behind a load balancer each allows
the full rate. :class:`RedisLimiter` shares every counter between instances through atomic Lua
scripts (Redis time, so instance clocks do not matter).
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any, Protocol

from dragoman.errors import ErrorKind, GatewayError
from dragoman.gateway.keys import Principal
from dragoman.gateway.logutil import ThrottledLog
from dragoman.gateway.timeutil import period_end, period_id, period_start, utcnow

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from dragoman.gateway.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(slots=True, frozen=True)
class RateLimits:
    rpm: int | None = None
    tpm: int | None = None
    max_parallel: int | None = None

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm", "max_parallel"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ValueError(f"{name} must be a positive integer, not {value!r}")

    def __bool__(self) -> bool:
        return self.rpm is not None or self.tpm is not None or self.max_parallel is not None


class Lease(Protocol):
    async def release(self, tokens: int, cost: float = 0.0) -> None:
        """End the request; ``tokens`` (prompt + completion) count toward tpm and the budget."""


class Limiter(Protocol):
    async def acquire(self, principal: Principal, model: str) -> Lease: ...


class BudgetSource(Protocol):
    async def spent(self, key_id: str, since: datetime) -> tuple[int, float]:
        """Tokens and cost a key has used since ``since`` (the usage store implements this)."""


class _NoLease:
    __slots__ = ()

    async def release(self, tokens: int, cost: float = 0.0) -> None:
        return None


NO_LEASE: Lease = _NoLease()


@dataclass(slots=True, frozen=True)
class _Bucket:
    scope: str
    limits: RateLimits
    owner: str  # for messages: "key 'alice'" or "model 'up/*'"


class _Policy:
    """What both limiters share: which buckets apply, budgets, and the errors they raise."""

    def __init__(self, per_model: bool, model_limits: Mapping[str, RateLimits] | None,
                 budget_source: BudgetSource | None, now: Callable[[], datetime],
                 metrics: Metrics | None) -> None:
        self.per_model = per_model
        self.model_limits = {glob: lim for glob, lim in (model_limits or {}).items() if lim}
        self.budget_source = budget_source
        self.now = now
        self.metrics = metrics

    def buckets(self, principal: Principal, model: str) -> list[_Bucket]:
        out = []
        key_limits = RateLimits(principal.rpm, principal.tpm, principal.max_parallel)
        if key_limits and principal.key_id:
            scope = f"key:{principal.key_id}" + (f":model:{model}" if self.per_model else "")
            out.append(_Bucket(scope, key_limits, f"key {principal.name!r}"))
        for glob, limits in self.model_limits.items():
            if fnmatchcase(model, glob):
                out.append(_Bucket(f"model:{glob}", limits, f"model {glob!r}"))
                break
        return out

    @staticmethod
    def has_budget(principal: Principal) -> bool:
        return bool(principal.key_id and principal.budget_period
                    and (principal.budget_tokens is not None or principal.budget_cost is not None))

    async def load_spent(self, key_id: str, since: datetime) -> tuple[int, float] | None:
        if self.budget_source is None:
            return 0, 0.0
        try:
            return await asyncio.wait_for(self.budget_source.spent(key_id, since), timeout=2.0)
        except Exception as exc:  # noqa: BLE001 - whatever the store raises, requests go on; retried later
            log.warning("could not read budget usage for key %s (%s); counting from zero for now", key_id, exc)
        return None

    def rate_error(self, bucket: _Bucket, kind: str, retry_after: float) -> GatewayError:
        lim = bucket.limits
        what = {
            "rpm": f"{lim.rpm} requests per minute",
            "tpm": f"{lim.tpm} tokens per minute",
            "parallel": f"{lim.max_parallel} parallel requests",
        }[kind]
        if self.metrics is not None:
            self.metrics.rate_limited(kind)
        return GatewayError(ErrorKind.RATE_LIMITED, f"Rate limit exceeded for {bucket.owner}: {what}.",
                            code="rate_limit_exceeded", retry_after=max(retry_after, 0.001))

    def budget_error(self, principal: Principal, kind: str, spent: float) -> GatewayError:
        assert principal.budget_period is not None
        now = self.now()
        end = period_end(principal.budget_period, now)
        if kind == "tokens":
            what = f"{int(spent)} of {principal.budget_tokens} tokens"
        else:
            what = f"{spent:.4f} of {principal.budget_cost:.4f} cost units"
        if self.metrics is not None:
            self.metrics.rate_limited(f"budget_{kind}")
        return GatewayError(
            ErrorKind.RATE_LIMITED,
            f"Budget exhausted for key {principal.name!r}: {what} used this {principal.budget_period}; "
            f"it resets at {end.isoformat()}.",
            code="budget_exceeded", retry_after=max((end - now).total_seconds(), 1.0),
        )


# -- in memory -----------------------------------------------------------------------------------


class _Window:
    """Events (time, amount) in the last ``window`` seconds and their running total."""

    __slots__ = ("events", "total")

    def __init__(self) -> None:
        self.events: deque[tuple[float, int]] = deque()
        self.total = 0

    def prune(self, now: float, window: float) -> None:
        events = self.events
        while events and events[0][0] <= now - window:
            self.total -= events.popleft()[1]

    def retry_after(self, limit: int, now: float, window: float) -> float | None:
        """None if under ``limit``; else seconds until enough events leave the window."""
        if self.total < limit:
            return None
        acc = 0
        for at, amount in self.events:
            acc += amount
            if self.total - acc < limit:
                return at + window - now
        return window

    def add(self, now: float, amount: int) -> None:
        self.events.append((now, amount))
        self.total += amount


@dataclass(slots=True)
class _Spend:
    period: str
    base_tokens: int = 0
    base_cost: float = 0.0
    loaded: bool = False
    next_load: float = 0.0
    tokens: int = 0  # counted here since the process started (in this period)
    cost: float = 0.0


class MemoryLimiter:
    """Per-process limits (see the module docstring). Everything happens between awaits, so a
    check and its count are atomic on the event loop."""

    def __init__(
        self,
        *,
        budget_source: BudgetSource | None = None,
        per_model: bool = False,
        model_limits: Mapping[str, RateLimits] | None = None,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = utcnow,
        metrics: Metrics | None = None,
    ) -> None:
        self._policy = _Policy(per_model, model_limits, budget_source, now, metrics)
        self._window = window
        self._clock = clock
        self._requests: dict[str, _Window] = {}
        self._tokens: dict[str, _Window] = {}
        self._active: dict[str, int] = {}
        self._spend: dict[str, _Spend] = {}

    async def acquire(self, principal: Principal, model: str) -> Lease:
        policy = self._policy
        buckets = policy.buckets(principal, model)
        budget = policy.has_budget(principal)
        if not buckets and not budget:
            return NO_LEASE
        spend = await self._check_budget(principal) if budget else None
        now, window = self._clock(), self._window
        for bucket in buckets:
            lim = bucket.limits
            if lim.rpm is not None:
                w = self._requests.setdefault(bucket.scope, _Window())
                w.prune(now, window)
                wait = w.retry_after(lim.rpm, now, window)
                if wait is not None:
                    raise policy.rate_error(bucket, "rpm", wait)
            if lim.tpm is not None:
                w = self._tokens.setdefault(bucket.scope, _Window())
                w.prune(now, window)
                wait = w.retry_after(lim.tpm, now, window)
                if wait is not None:
                    raise policy.rate_error(bucket, "tpm", wait)
            if lim.max_parallel is not None and self._active.get(bucket.scope, 0) >= lim.max_parallel:
                raise policy.rate_error(bucket, "parallel", 1.0)
        for bucket in buckets:
            if bucket.limits.rpm is not None:
                self._requests[bucket.scope].add(now, 1)
            if bucket.limits.max_parallel is not None:
                self._active[bucket.scope] = self._active.get(bucket.scope, 0) + 1
        return _MemoryLease(self, buckets, spend)

    async def _check_budget(self, principal: Principal) -> _Spend:
        assert principal.budget_period is not None
        policy = self._policy
        now = policy.now()
        pid = period_id(principal.budget_period, now)
        spend = self._spend.get(principal.key_id)
        if spend is None or spend.period != pid:
            spend = self._spend[principal.key_id] = _Spend(pid)
        if not spend.loaded and self._clock() >= spend.next_load:
            spent = await policy.load_spent(principal.key_id, period_start(principal.budget_period, now))
            if spent is None:
                spend.next_load = self._clock() + 30.0
            else:
                spend.base_tokens, spend.base_cost = spent
                spend.loaded = True
        tokens, cost = spend.base_tokens + spend.tokens, spend.base_cost + spend.cost
        if principal.budget_tokens is not None and tokens >= principal.budget_tokens:
            raise policy.budget_error(principal, "tokens", tokens)
        if principal.budget_cost is not None and cost >= principal.budget_cost:
            raise policy.budget_error(principal, "cost", cost)
        return spend

    def _release(self, buckets: list[_Bucket], spend: _Spend | None, tokens: int, cost: float) -> None:
        now = self._clock()
        for bucket in buckets:
            if bucket.limits.max_parallel is not None:
                left = self._active.get(bucket.scope, 0) - 1
                if left > 0:
                    self._active[bucket.scope] = left
                else:
                    self._active.pop(bucket.scope, None)
            if bucket.limits.tpm is not None and tokens > 0:
                self._tokens.setdefault(bucket.scope, _Window()).add(now, tokens)
        if spend is not None:
            spend.tokens += max(tokens, 0)
            spend.cost += max(cost, 0.0)


class _MemoryLease:
    __slots__ = ("_buckets", "_limiter", "_released", "_spend")

    def __init__(self, limiter: MemoryLimiter, buckets: list[_Bucket], spend: _Spend | None) -> None:
        self._limiter = limiter
        self._buckets = buckets
        self._spend = spend
        self._released = False

    async def release(self, tokens: int, cost: float = 0.0) -> None:
        if not self._released:
            self._released = True
            self._limiter._release(self._buckets, self._spend, tokens, cost)


# -- in Redis ------------------------------------------------------------------------------------

# KEYS: per bucket (requests zset, tokens hash second->tokens, leases zset), then the budget's
# tokens and cost keys. ARGV: window ms, lease id, lease ttl ms, bucket count, token budget,
# cost budget (-1: none), then per bucket rpm, tpm, parallel (-1: none).
# Returns {1} admitted, {-1} budget counters need seeding, {0, bucket, reason, retry ms} refused.
_ACQUIRE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local lease = ARGV[2]
local lease_ttl = tonumber(ARGV[3])
local nb = tonumber(ARGV[4])
local btok = tonumber(ARGV[5])
local bcost = tonumber(ARGV[6])
if btok >= 0 or bcost >= 0 then
  local tk, ck = KEYS[3 * nb + 1], KEYS[3 * nb + 2]
  if redis.call('EXISTS', tk) == 0 or redis.call('EXISTS', ck) == 0 then return {-1} end
  if btok >= 0 and tonumber(redis.call('GET', tk)) >= btok then return {0, -1, 'budget_tokens', 0} end
  if bcost >= 0 and tonumber(redis.call('GET', ck)) >= bcost then return {0, -1, 'budget_cost', 0} end
end
for i = 0, nb - 1 do
  local rk, tk, pk = KEYS[3 * i + 1], KEYS[3 * i + 2], KEYS[3 * i + 3]
  local rpm, tpm, par = tonumber(ARGV[7 + 3 * i]), tonumber(ARGV[8 + 3 * i]), tonumber(ARGV[9 + 3 * i])
  if rpm >= 0 then
    redis.call('ZREMRANGEBYSCORE', rk, '-inf', now - window)
    local n = redis.call('ZCARD', rk)
    if n >= rpm then
      local e = redis.call('ZRANGE', rk, n - rpm, n - rpm, 'WITHSCORES')
      return {0, i, 'rpm', tonumber(e[2]) + window - now}
    end
  end
  if tpm >= 0 then
    local h = redis.call('HGETALL', tk)
    local live = {}
    local total = 0
    for j = 1, #h, 2 do
      local s = tonumber(h[j])
      if (s + 1) * 1000 <= now - window then
        redis.call('HDEL', tk, h[j])
      else
        local v = tonumber(h[j + 1])
        total = total + v
        table.insert(live, {s, v})
      end
    end
    if total >= tpm then
      table.sort(live, function(a, b) return a[1] < b[1] end)
      local acc = 0
      for _, e in ipairs(live) do
        acc = acc + e[2]
        if total - acc < tpm then return {0, i, 'tpm', (e[1] + 1) * 1000 + window - now} end
      end
      return {0, i, 'tpm', window}
    end
  end
  if par >= 0 then
    redis.call('ZREMRANGEBYSCORE', pk, '-inf', now)
    if redis.call('ZCARD', pk) >= par then return {0, i, 'parallel', 1000} end
  end
end
for i = 0, nb - 1 do
  local rk, pk = KEYS[3 * i + 1], KEYS[3 * i + 3]
  if tonumber(ARGV[7 + 3 * i]) >= 0 then
    redis.call('ZADD', rk, now, lease)
    redis.call('PEXPIRE', rk, window + 1000)
  end
  if tonumber(ARGV[9 + 3 * i]) >= 0 then
    redis.call('ZADD', pk, now + lease_ttl, lease)
    redis.call('PEXPIRE', pk, lease_ttl + 1000)
  end
end
return {1}
"""

# KEYS: per bucket (tokens hash, leases zset), then the budget's tokens and cost keys when ARGV[5]
# is 1. ARGV: lease id, tokens, cost, bucket count, has budget, window ms, then per bucket
# has-tpm, has-parallel (0/1).
_RELEASE_LUA = """
local sec = tonumber(redis.call('TIME')[1])
local lease = ARGV[1]
local tokens = tonumber(ARGV[2])
local nb = tonumber(ARGV[4])
local window = tonumber(ARGV[6])
for i = 0, nb - 1 do
  local tk, pk = KEYS[2 * i + 1], KEYS[2 * i + 2]
  if ARGV[8 + 2 * i] == '1' then redis.call('ZREM', pk, lease) end
  if ARGV[7 + 2 * i] == '1' and tokens > 0 then
    redis.call('HINCRBY', tk, sec, tokens)
    redis.call('PEXPIRE', tk, window + 2000)
  end
end
if ARGV[5] == '1' then
  local bt, bc = KEYS[2 * nb + 1], KEYS[2 * nb + 2]
  if tokens > 0 and redis.call('EXISTS', bt) == 1 then redis.call('INCRBY', bt, tokens) end
  if tonumber(ARGV[3]) > 0 and redis.call('EXISTS', bc) == 1 then redis.call('INCRBYFLOAT', bc, ARGV[3]) end
end
return 1
"""


class RedisLimiter:
    """Limits shared by every instance on one Redis (see the module docstring).

    ``lease_ttl`` bounds how long a parallel slot outlives an instance that died mid-request (a
    request running longer than that stops counting toward ``max_parallel``). If Redis is
    unreachable, ``fail_open`` (default) admits requests unlimited and logs, because a limiter
    outage should not become a gateway outage; ``fail_open=False`` refuses them with a 503.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str = "dragoman:",
        budget_source: BudgetSource | None = None,
        per_model: bool = False,
        model_limits: Mapping[str, RateLimits] | None = None,
        window: float = 60.0,
        lease_ttl: float = 900.0,
        fail_open: bool = True,
        now: Callable[[], datetime] = utcnow,
        metrics: Metrics | None = None,
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._policy = _Policy(per_model, model_limits, budget_source, now, metrics)
        self._window_ms = int(window * 1000)
        self._lease_ttl_ms = int(lease_ttl * 1000)
        self._fail_open = fail_open
        self._acquire = redis.register_script(_ACQUIRE_LUA)
        self._release = redis.register_script(_RELEASE_LUA)
        self._warn = ThrottledLog(log, 10.0)

    def _budget_keys(self, principal: Principal) -> tuple[str, str]:
        assert principal.budget_period is not None
        pid = period_id(principal.budget_period, self._policy.now())
        base = f"{self._prefix}budget:{principal.key_id}:{pid}"
        return base + ":tokens", base + ":cost"

    async def acquire(self, principal: Principal, model: str) -> Lease:
        from redis.exceptions import RedisError

        policy = self._policy
        buckets = policy.buckets(principal, model)
        budget = policy.has_budget(principal)
        if not buckets and not budget:
            return NO_LEASE
        lease_id = secrets.token_hex(8)
        keys: list[str] = []
        args: list[Any] = [self._window_ms, lease_id, self._lease_ttl_ms, len(buckets),
                           _arg(principal.budget_tokens if budget else None),
                           _arg(principal.budget_cost if budget else None)]
        for bucket in buckets:
            base = f"{self._prefix}rl:{bucket.scope}"
            keys += [base + ":requests", base + ":tokens", base + ":leases"]
            lim = bucket.limits
            args += [_arg(lim.rpm), _arg(lim.tpm), _arg(lim.max_parallel)]
        budget_keys = self._budget_keys(principal) if budget else ("", "")
        if budget:
            keys += budget_keys
        try:
            result = await self._acquire(keys=keys, args=args)
            if result[0] == -1:
                await self._seed_budget(principal, budget_keys)
                result = await self._acquire(keys=keys, args=args)
                if result[0] == -1:  # only if the counters vanished in between: do not loop
                    self._warn(logging.WARNING, "rate limiter: budget counters for key %s missing",
                               principal.key_id)
                    return NO_LEASE
        except (RedisError, OSError) as exc:
            if not self._fail_open:
                raise GatewayError(ErrorKind.OVERLOADED, "The rate limiter is unavailable; try again shortly.",
                                   retry_after=1.0) from exc
            self._warn(logging.WARNING, "rate limiter: Redis unavailable (%s); admitting without limits", exc)
            return NO_LEASE
        if result[0] == 0:
            index, reason, retry_ms = int(result[1]), _text(result[2]), float(result[3])
            if reason.startswith("budget_"):
                kind = reason.removeprefix("budget_")
                spent = await self._spent_now(budget_keys[0 if kind == "tokens" else 1])
                raise policy.budget_error(principal, kind, spent)
            raise policy.rate_error(buckets[index], reason, retry_ms / 1000)
        return _RedisLease(self, lease_id, buckets, budget_keys if budget else None)

    async def _seed_budget(self, principal: Principal, keys: tuple[str, str]) -> None:
        """Start this period's counters from the usage table (NX: the first instance wins)."""
        assert principal.budget_period is not None
        now = self._policy.now()
        spent = await self._policy.load_spent(principal.key_id, period_start(principal.budget_period, now))
        tokens, cost = spent if spent is not None else (0, 0.0)
        # Keep the counters a day past the period's end; a new period uses new keys.
        expire_at_ms = int(period_end(principal.budget_period, now).timestamp() * 1000) + 86_400_000
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(keys[0], int(tokens), nx=True, pxat=expire_at_ms)
            pipe.set(keys[1], repr(float(cost)), nx=True, pxat=expire_at_ms)
            await pipe.execute()

    async def _spent_now(self, key: str) -> float:
        value = await self._redis.get(key)
        return float(value) if value is not None else 0.0

    async def release_lease(self, lease: _RedisLease, tokens: int, cost: float) -> None:
        from redis.exceptions import RedisError

        keys: list[str] = []
        flags: list[int] = []
        for bucket in lease.buckets:
            base = f"{self._prefix}rl:{bucket.scope}"
            keys += [base + ":tokens", base + ":leases"]
            flags += [int(bucket.limits.tpm is not None), int(bucket.limits.max_parallel is not None)]
        has_budget = lease.budget_keys is not None
        if lease.budget_keys is not None:
            keys += lease.budget_keys
        args: list[Any] = [lease.lease_id, max(int(tokens), 0), repr(max(float(cost), 0.0)),
                           len(lease.buckets), int(has_budget), self._window_ms, *flags]
        try:
            await self._release(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            # The parallel slot frees itself after lease_ttl; tokens of this request are not counted.
            self._warn(logging.WARNING, "rate limiter: could not release a lease (%s)", exc)


class _RedisLease:
    __slots__ = ("buckets", "budget_keys", "lease_id", "limiter", "released")

    def __init__(self, limiter: RedisLimiter, lease_id: str, buckets: list[_Bucket],
                 budget_keys: tuple[str, str] | None) -> None:
        self.limiter = limiter
        self.lease_id = lease_id
        self.buckets = buckets
        self.budget_keys = budget_keys
        self.released = False

    async def release(self, tokens: int, cost: float = 0.0) -> None:
        if self.released:
            return
        self.released = True
        await self.limiter.release_lease(self, tokens, cost)


def _arg(value: float | None) -> float:
    return -1 if value is None else value


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def ceil_seconds(retry_after: float) -> int:
    """``Retry-After`` header value: whole seconds, at least 1."""
    return max(1, math.ceil(retry_after))
