"""Limits shared by every instance through Redis: atomic Lua scripts on Redis time."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from dragoman.errors import ErrorKind, GatewayError
from dragoman.gateway.keys import Principal
from dragoman.gateway.limits.base import NO_LEASE, Bucket, BudgetSource, Lease, Policy, RateLimits
from dragoman.gateway.logutil import ThrottledLog
from dragoman.gateway.timeutil import period_end, period_id, period_start, utcnow

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from dragoman.gateway.metrics import Metrics

log = logging.getLogger(__name__)

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
    Each Redis call is bounded by ``timeout`` seconds, and after a failure Redis is not tried
    again for ``retry_down_after`` seconds, so an outage costs requests no waiting.
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
        timeout: float = 0.5,
        retry_down_after: float = 5.0,
        now: Callable[[], datetime] = utcnow,
        clock: Callable[[], float] = time.monotonic,
        metrics: Metrics | None = None,
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._policy = Policy(per_model, model_limits, budget_source, now, metrics, window)
        self._window_ms = int(window * 1000)
        self._lease_ttl_ms = int(lease_ttl * 1000)
        self._fail_open = fail_open
        self._timeout = timeout
        self._retry_down_after = retry_down_after
        self._clock = clock
        self._down_until = 0.0
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
        buckets, budget = policy.applying(principal, model)
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
        if self._clock() < self._down_until:
            return self._unavailable(None)
        try:
            async with asyncio.timeout(self._timeout):
                result = await self._acquire(keys=keys, args=args)
            if result[0] == -1:
                await self._seed_budget(principal, budget_keys)
                async with asyncio.timeout(self._timeout):
                    result = await self._acquire(keys=keys, args=args)
                if result[0] == -1:  # only if the counters vanished in between: do not loop
                    self._warn(logging.WARNING, "rate limiter: budget counters for key %s missing",
                               principal.key_id)
                    return NO_LEASE
        except (RedisError, OSError, TimeoutError) as exc:
            self._down_until = self._clock() + self._retry_down_after
            return self._unavailable(exc)
        if result[0] == 0:
            index, reason, retry_ms = int(result[1]), _text(result[2]), float(result[3])
            if reason.startswith("budget_"):
                kind = reason.removeprefix("budget_")
                spent = await self._spent_now(budget_keys[0 if kind == "tokens" else 1])
                raise policy.budget_error(principal, kind, spent)
            raise policy.rate_error(buckets[index], reason, retry_ms / 1000)
        return _RedisLease(self, lease_id, buckets, budget_keys if budget else None)

    def _unavailable(self, exc: BaseException | None) -> Lease:
        if not self._fail_open:
            raise GatewayError(ErrorKind.OVERLOADED, "The rate limiter is unavailable; try again shortly.",
                               retry_after=1.0) from exc
        self._warn(logging.WARNING, "rate limiter: Redis unavailable (%s); admitting without limits",
                   exc or "recent failure")
        return NO_LEASE

    async def _seed_budget(self, principal: Principal, keys: tuple[str, str]) -> None:
        """Start this period's counters from the usage table (NX: the first instance wins)."""
        assert principal.budget_period is not None
        now = self._policy.now()
        spent = await self._policy.load_spent(principal.key_id, period_start(principal.budget_period, now))
        tokens, cost = spent if spent is not None else (0, 0.0)
        # Keep the counters a day past the period's end; a new period uses new keys.
        expire_at_ms = int(period_end(principal.budget_period, now).timestamp() * 1000) + 86_400_000
        async with asyncio.timeout(self._timeout), self._redis.pipeline(transaction=True) as pipe:
            pipe.set(keys[0], int(tokens), nx=True, pxat=expire_at_ms)
            pipe.set(keys[1], repr(float(cost)), nx=True, pxat=expire_at_ms)
            await pipe.execute()

    async def _spent_now(self, key: str) -> float:
        from redis.exceptions import RedisError

        try:
            async with asyncio.timeout(self._timeout):
                value = await self._redis.get(key)
        except (RedisError, OSError, TimeoutError):
            return float("nan")  # only for the message; the refusal itself stands
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
        if self._clock() < self._down_until:
            return
        try:
            async with asyncio.timeout(self._timeout):
                await self._release(keys=keys, args=args)
        except (RedisError, OSError, TimeoutError) as exc:
            self._down_until = self._clock() + self._retry_down_after
            # The parallel slot frees itself after lease_ttl; tokens of this request are not counted.
            self._warn(logging.WARNING, "rate limiter: could not release a lease (%s)", exc)


class _RedisLease:
    __slots__ = ("buckets", "budget_keys", "lease_id", "limiter", "released")

    def __init__(self, limiter: RedisLimiter, lease_id: str, buckets: list[Bucket],
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
