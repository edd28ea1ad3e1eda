"""Rate limits (rpm, tpm, parallel requests) and token/cost budgets, checked before a request.

``acquire(principal, model, request)`` admits a request or raises ``GatewayError(RATE_LIMITED)``
with ``retry_after``; the returned lease's ``release(tokens, cost)`` ends it, counting its tokens
toward tpm and the budget. Tokens are only known afterwards, so a burst of concurrent requests
can overshoot tpm by what they use (the next request is refused); a budget instead holds each
request's reservation from admission to release (``reservation``), so concurrent requests
overspend it by at most one reservation.

Buckets: the key's own limits apply across all models, or per model with ``per_model=True``.
``model_limits`` (glob -> :class:`RateLimits`, the config's ``limits.models``) adds limits that
every caller of the matching models shares, e.g. to stay under an upstream's quota; a glob's
limits are shared by all the models it matches (the first matching glob applies).

Windows slide over the last ``window`` seconds (60): rpm exactly, tpm exactly in memory and with
one-second resolution in Redis. Budgets are per UTC day or month; their starting figure for the
period is read once from the usage table (``BudgetSource``), then counted up as requests end.

:class:`MemoryLimiter` counts per process: with N instances behind a load balancer each allows
the full rate. :class:`RedisLimiter` shares every counter between instances through atomic Lua
scripts (Redis time, so instance clocks do not matter).
"""

from __future__ import annotations

from dragoman.gateway.limits.base import (
    NO_LEASE,
    BudgetSource,
    Lease,
    Limiter,
    RateLimits,
    ceil_seconds,
)
from dragoman.gateway.limits.memory import MemoryLimiter
from dragoman.gateway.limits.redis_limiter import RedisLimiter
from dragoman.gateway.limits.reservation import NO_RESERVATION, Reservation, Reserver

__all__ = ["NO_LEASE", "NO_RESERVATION", "BudgetSource", "Lease", "Limiter", "MemoryLimiter", "RateLimits",
           "RedisLimiter", "Reservation", "Reserver", "ceil_seconds"]
