"""Limits shared by every instance through Redis: atomic Lua scripts on Redis time.

Only Redis failing counts as Redis being down (refused or dropped connections, timeouts). A burst
of requests queues for the instance's Redis connections (``RedisGate``): a request whose wait
runs out is refused on its own (503), and every other request stays limited.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from dragoman.core.types import ChatRequest
from dragoman.errors import ErrorKind, GatewayError
from dragoman.gateway.keys import Principal
from dragoman.gateway.limits.base import NO_LEASE, Bucket, BudgetSource, Lease, Policy, RateLimits
from dragoman.gateway.limits.reservation import NO_RESERVATION, Reservation, Reserver
from dragoman.gateway.logutil import ThrottledLog
from dragoman.gateway.redis_client import DEFAULT_POOL_WAIT
from dragoman.gateway.redis_gate import RedisBusy, RedisGate
from dragoman.gateway.timeutil import period_end, period_id, period_start, utcnow

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

    from dragoman.gateway.metrics import Metrics

log = logging.getLogger(__name__)

# KEYS: per bucket (requests zset, tokens hash second->tokens, leases zset), then the budget's
# tokens and cost keys. ARGV: window ms, lease id, lease ttl ms, bucket count, token budget,
# cost budget (-1: none), tokens and cost to reserve, then per bucket rpm, tpm, parallel (-1: none).
# Returns {1} admitted, {-1} budget counters need seeding, {0, bucket, reason, retry ms} refused.
# The budget counters hold what was spent plus what the requests in flight reserved.
_ACQUIRE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local lease = ARGV[2]
local lease_ttl = tonumber(ARGV[3])
local nb = tonumber(ARGV[4])
local btok = tonumber(ARGV[5])
local bcost = tonumber(ARGV[6])
local budget = btok >= 0 or bcost >= 0
if budget then
  local tk, ck = KEYS[3 * nb + 1], KEYS[3 * nb + 2]
  if redis.call('EXISTS', tk) == 0 or redis.call('EXISTS', ck) == 0 then return {-1} end
  if btok >= 0 and tonumber(redis.call('GET', tk)) >= btok then return {0, -1, 'budget_tokens', 0} end
  if bcost >= 0 and tonumber(redis.call('GET', ck)) >= bcost then return {0, -1, 'budget_cost', 0} end
end
for i = 0, nb - 1 do
  local rk, tk, pk = KEYS[3 * i + 1], KEYS[3 * i + 2], KEYS[3 * i + 3]
  local rpm, tpm, par = tonumber(ARGV[9 + 3 * i]), tonumber(ARGV[10 + 3 * i]), tonumber(ARGV[11 + 3 * i])
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
  if tonumber(ARGV[9 + 3 * i]) >= 0 then
    redis.call('ZADD', rk, now, lease)
    redis.call('PEXPIRE', rk, window + 1000)
  end
  if tonumber(ARGV[11 + 3 * i]) >= 0 then
    redis.call('ZADD', pk, now + lease_ttl, lease)
    redis.call('PEXPIRE', pk, lease_ttl + 1000)
  end
end
if budget then
  if tonumber(ARGV[7]) > 0 then redis.call('INCRBY', KEYS[3 * nb + 1], ARGV[7]) end
  if tonumber(ARGV[8]) > 0 then redis.call('INCRBYFLOAT', KEYS[3 * nb + 2], ARGV[8]) end
end
return {1}
"""

# KEYS: per bucket (tokens hash, leases zset), then the budget's tokens and cost keys when ARGV[4]
# is 1. ARGV: lease id, tokens, bucket count, has budget, window ms, then the budget's token and
# cost changes (what was spent less what was reserved), then per bucket has-tpm, has-parallel (0/1).
_RELEASE_LUA = """
local sec = tonumber(redis.call('TIME')[1])
local lease = ARGV[1]
local tokens = tonumber(ARGV[2])
local nb = tonumber(ARGV[3])
local window = tonumber(ARGV[5])
for i = 0, nb - 1 do
  local tk, pk = KEYS[2 * i + 1], KEYS[2 * i + 2]
  if ARGV[9 + 2 * i] == '1' then redis.call('ZREM', pk, lease) end
  if ARGV[8 + 2 * i] == '1' and tokens > 0 then
    redis.call('HINCRBY', tk, sec, tokens)
    redis.call('PEXPIRE', tk, window + 2000)
  end
end
if ARGV[4] == '1' then
  local bt, bc = KEYS[2 * nb + 1], KEYS[2 * nb + 2]
  if tonumber(ARGV[6]) ~= 0 and redis.call('EXISTS', bt) == 1 then redis.call('INCRBY', bt, ARGV[6]) end
  if tonumber(ARGV[7]) ~= 0 and redis.call('EXISTS', bc) == 1 then redis.call('INCRBYFLOAT', bc, ARGV[7]) end
end
return 1
"""


class RedisLimiter:
    """Limits shared by every instance on one Redis (see the module docstring).

    ``lease_ttl`` bounds how long a parallel slot outlives an instance that died mid-request (a
    request running longer than that stops counting toward ``max_parallel``). If Redis is
    unreachable, ``fail_open`` (default) admits requests unlimited and logs, because a limiter
    outage should not become a gateway outage; ``fail_open=False`` refuses them with a 503.
    Each Redis call is bounded by ``timeout`` seconds of Redis's time (``RedisGate``: a busy
    event loop does not count), and after a failure Redis is not tried again for
    ``retry_down_after`` seconds, so an outage costs requests no waiting.

    At most ``max_inflight`` calls are in flight (default: the client pool's size; keep it at or
    below the connections this limiter may use, so that a call never waits for one); the others
    wait for their turn up to ``pool_wait`` seconds, then that request alone gets a 503.
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
        max_inflight: int | None = None,
        pool_wait: float = DEFAULT_POOL_WAIT,
        reserver: Reserver | None = None,
        now: Callable[[], datetime] = utcnow,
        clock: Callable[[], float] = time.monotonic,
        metrics: Metrics | None = None,
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._policy = Policy(per_model, model_limits, budget_source, now, metrics, window, reserver)
        self._window_ms = int(window * 1000)
        self._lease_ttl_ms = int(lease_ttl * 1000)
        self._fail_open = fail_open
        self._retry_down_after = retry_down_after
        self._gate = RedisGate(max_inflight or redis.connection_pool.max_connections, timeout=timeout)
        self._pool_wait = pool_wait
        self._clock = clock
        self._down_until = 0.0
        self._acquire = redis.register_script(_ACQUIRE_LUA)
        self._release = redis.register_script(_RELEASE_LUA)
        self._warn = ThrottledLog(log, 10.0)
        self._busy_warn = ThrottledLog(log, 10.0)

    def _budget_keys(self, principal: Principal) -> tuple[str, str]:
        assert principal.budget_period is not None
        pid = period_id(principal.budget_period, self._policy.now())
        base = f"{self._prefix}budget:{principal.key_id}:{pid}"
        return base + ":tokens", base + ":cost"

    async def acquire(self, principal: Principal, model: str, request: ChatRequest | None = None) -> Lease:
        from redis.exceptions import RedisError

        policy = self._policy
        buckets, budget = policy.applying(principal, model)
        if not buckets and not budget:
            return NO_LEASE
        reserved = policy.reserver.reserve(model, request) if budget else NO_RESERVATION
        lease_id = secrets.token_hex(8)
        keys: list[str] = []
        args: list[Any] = [self._window_ms, lease_id, self._lease_ttl_ms, len(buckets),
                           _arg(principal.budget_tokens if budget else None),
                           _arg(principal.budget_cost if budget else None), reserved.tokens, repr(reserved.cost)]
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
            result = await self._call(self._acquire, keys, args, self._pool_wait)
            if result is not None and result[0] == -1:
                await self._seed_budget(principal, budget_keys)
                result = await self._call(self._acquire, keys, args, self._pool_wait)
                if result is not None and result[0] == -1:  # only if the counters vanished in between: do not loop
                    self._warn(logging.WARNING, "rate limiter: budget counters for key %s missing",
                               principal.key_id)
                    return NO_LEASE
        except RedisBusy as exc:
            raise self._busy() from exc
        except (RedisError, OSError, TimeoutError) as exc:
            self._down_until = self._clock() + self._retry_down_after
            return self._unavailable(exc)
        if result is None:  # Redis failed while this request waited its turn
            return self._unavailable(None)
        if result[0] == 0:
            index, reason, retry_ms = int(result[1]), _text(result[2]), float(result[3])
            if reason.startswith("budget_"):
                kind = reason.removeprefix("budget_")
                spent = await self._spent_now(budget_keys[0 if kind == "tokens" else 1])
                raise policy.budget_error(principal, kind, spent)
            raise policy.rate_error(buckets[index], reason, retry_ms / 1000)
        return _RedisLease(self, lease_id, buckets, budget_keys if budget else None, reserved)

    async def _call(self, script: AsyncScript, keys: list[str], args: list[Any],
                    wait: float | None) -> Any | None:
        """One script call on a turn; None when Redis was found down while this one waited."""
        async with self._gate.turn(wait):
            if self._clock() < self._down_until:
                return None
            return await self._gate.reply(script(keys=keys, args=args))

    def _busy(self) -> GatewayError:
        """Every Redis connection stayed busy for the whole wait: this request alone is refused."""
        self._busy_warn(logging.WARNING, "rate limiter: no Redis connection free within %.1fs; refusing a request "
                   "(raise redis.max_connections or redis.pool_wait if this repeats)", self._pool_wait)
        return GatewayError(ErrorKind.OVERLOADED, "The gateway is busy; try again shortly.", retry_after=1.0)

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
        async with self._gate.turn(self._pool_wait), self._redis.pipeline(transaction=True) as pipe:
            pipe.set(keys[0], int(tokens), nx=True, pxat=expire_at_ms)
            pipe.set(keys[1], repr(float(cost)), nx=True, pxat=expire_at_ms)
            await self._gate.reply(pipe.execute())

    async def _spent_now(self, key: str) -> float:
        from redis.exceptions import RedisError

        try:
            async with self._gate.turn(self._pool_wait):
                value = await self._gate.reply(self._redis.get(key))
        except (RedisError, OSError, TimeoutError, RedisBusy):
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
        tokens, cost = max(int(tokens), 0), max(float(cost), 0.0)
        reserved = lease.reserved
        args: list[Any] = [lease.lease_id, tokens, len(lease.buckets), int(has_budget), self._window_ms,
                           tokens - reserved.tokens, repr(cost - reserved.cost), *flags]
        if self._clock() < self._down_until:
            return
        try:
            # No limit on the wait: every turn ends within ``timeout``, and a lease must not leak.
            await self._call(self._release, keys, args, None)
        except (RedisError, OSError, TimeoutError) as exc:
            self._down_until = self._clock() + self._retry_down_after
            # The parallel slot frees itself after lease_ttl; tokens of this request are not counted.
            self._warn(logging.WARNING, "rate limiter: could not release a lease (%s)", exc)


class _RedisLease:
    __slots__ = ("buckets", "budget_keys", "lease_id", "limiter", "released", "reserved")

    def __init__(self, limiter: RedisLimiter, lease_id: str, buckets: list[Bucket],
                 budget_keys: tuple[str, str] | None, reserved: Reservation) -> None:
        self.limiter = limiter
        self.lease_id = lease_id
        self.buckets = buckets
        self.budget_keys = budget_keys
        self.reserved = reserved
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
