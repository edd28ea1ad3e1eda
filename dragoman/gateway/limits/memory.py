"""Per-process limits: exact sliding windows in memory."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from dragoman.core.types import ChatRequest
from dragoman.gateway.keys import Principal
from dragoman.gateway.limits.base import NO_LEASE, Bucket, BudgetSource, Lease, Policy, RateLimits
from dragoman.gateway.limits.reservation import NO_RESERVATION, Reservation, Reserver
from dragoman.gateway.timeutil import period_id, period_start, utcnow

if TYPE_CHECKING:
    from dragoman.gateway.metrics import Metrics


class _Window:
    """Events (time, amount) in the last ``window`` seconds and their running total."""

    __slots__ = ("events", "total")

    def __init__(self) -> None:
        self.events: deque[tuple[float, int]] = deque()
        self.total = 0

    def retry_after(self, limit: int, now: float, window: float) -> float | None:
        """None if under ``limit`` once older events have left; else seconds until enough more do."""
        events = self.events
        while events and events[0][0] <= now - window:
            self.total -= events.popleft()[1]
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
    tokens: int = 0  # counted here since the process started (in this period), reservations included
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
        reserver: Reserver | None = None,
    ) -> None:
        self._policy = Policy(per_model, model_limits, budget_source, now, metrics, window, reserver)
        self._window = window
        self._clock = clock
        self._requests: dict[str, _Window] = {}
        self._tokens: dict[str, _Window] = {}
        self._active: dict[str, int] = {}
        self._spend: dict[str, _Spend] = {}

    async def acquire(self, principal: Principal, model: str, request: ChatRequest | None = None) -> Lease:
        policy = self._policy
        buckets, budget = policy.applying(principal, model)
        if not buckets and not budget:
            return NO_LEASE
        spend = await self._check_budget(principal) if budget else None
        now, window = self._clock(), self._window
        for bucket in buckets:
            lim = bucket.limits
            for limit, windows, kind in ((lim.rpm, self._requests, "rpm"), (lim.tpm, self._tokens, "tpm")):
                if limit is not None:
                    wait = windows.setdefault(bucket.scope, _Window()).retry_after(limit, now, window)
                    if wait is not None:
                        raise policy.rate_error(bucket, kind, wait)
            if lim.max_parallel is not None and self._active.get(bucket.scope, 0) >= lim.max_parallel:
                raise policy.rate_error(bucket, "parallel", 1.0)
        for bucket in buckets:
            if bucket.limits.rpm is not None:
                self._requests[bucket.scope].add(now, 1)
            if bucket.limits.max_parallel is not None:
                self._active[bucket.scope] = self._active.get(bucket.scope, 0) + 1
        reserved = NO_RESERVATION
        if spend is not None:
            reserved = policy.reserver.reserve(model, request)
            spend.tokens += reserved.tokens
            spend.cost += reserved.cost
        return _MemoryLease(self, buckets, spend, reserved)

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

    def _release(self, buckets: list[Bucket], spend: _Spend | None, reserved: Reservation, tokens: int,
                 cost: float) -> None:
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
        if spend is not None:  # the reservation settles to what the request spent
            spend.tokens += max(tokens, 0) - reserved.tokens
            spend.cost += max(cost, 0.0) - reserved.cost


class _MemoryLease:
    __slots__ = ("_buckets", "_limiter", "_released", "_reserved", "_spend")

    def __init__(self, limiter: MemoryLimiter, buckets: list[Bucket], spend: _Spend | None,
                 reserved: Reservation) -> None:
        self._limiter = limiter
        self._buckets = buckets
        self._spend = spend
        self._reserved = reserved
        self._released = False

    async def release(self, tokens: int, cost: float = 0.0) -> None:
        if not self._released:
            self._released = True
            self._limiter._release(self._buckets, self._spend, self._reserved, tokens, cost)
