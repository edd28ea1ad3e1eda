"""What both limiters share: limits, the lease and limiter protocols, budgets, and errors."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Protocol

from dragoman.core.types import ChatRequest
from dragoman.errors import ErrorKind, GatewayError
from dragoman.gateway.keys import Principal
from dragoman.gateway.limits.reservation import Reserver
from dragoman.gateway.timeutil import period_end

if TYPE_CHECKING:
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
        """End the request; ``tokens`` (prompt + completion) count toward tpm and the budget, in
        place of what the request reserved."""


class Limiter(Protocol):
    async def acquire(self, principal: Principal, model: str, request: ChatRequest | None = None) -> Lease:
        """Admit a call of ``model`` (``<backend>/<model>``) or raise; ``request`` (a chat) is
        what a budget reserves for (see ``reservation``)."""
        ...


class BudgetSource(Protocol):
    async def spent(self, key_id: str, since: datetime) -> tuple[int, float]:
        """Tokens and cost a key has used since ``since`` (the usage store implements this); it
        bounds its own wait (a request may be waiting), raising ``TimeoutError`` past it."""


class _NoLease:
    __slots__ = ()

    async def release(self, tokens: int, cost: float = 0.0) -> None:
        return None


NO_LEASE: Lease = _NoLease()


@dataclass(slots=True, frozen=True)
class Bucket:
    scope: str
    limits: RateLimits
    owner: str  # for messages: "key 'alice'" or "model 'up/*'"


class Policy:
    """What both limiters share: which buckets apply, budgets, and the errors they raise."""

    def __init__(self, per_model: bool, model_limits: Mapping[str, RateLimits] | None,
                 budget_source: BudgetSource | None, now: Callable[[], datetime],
                 metrics: Metrics | None, window: float, reserver: Reserver | None = None) -> None:
        self.per_model = per_model
        self.reserver = reserver or Reserver()
        self.per = "minute" if window == 60 else f"{window:g} seconds"
        self.model_limits = {glob: lim for glob, lim in (model_limits or {}).items() if lim}
        self.budget_source = budget_source
        self.now = now
        self.metrics = metrics

    def buckets(self, principal: Principal, model: str) -> list[Bucket]:
        out = []
        key_limits = RateLimits(principal.rpm, principal.tpm, principal.max_parallel)
        if key_limits and principal.key_id:
            scope = f"key:{principal.key_id}" + (f":model:{model}" if self.per_model else "")
            out.append(Bucket(scope, key_limits, f"key {principal.name!r}"))
        for glob, limits in self.model_limits.items():
            if fnmatchcase(model, glob):
                out.append(Bucket(f"model:{glob}", limits, f"model {glob!r}"))
                break
        return out

    def applying(self, principal: Principal, model: str) -> tuple[list[Bucket], bool]:
        """The rate buckets that apply to this call, and whether a budget does."""
        return self.buckets(principal, model), self.has_budget(principal)

    @staticmethod
    def has_budget(principal: Principal) -> bool:
        return bool(principal.key_id and principal.budget_period
                    and (principal.budget_tokens is not None or principal.budget_cost is not None))

    async def load_spent(self, key_id: str, since: datetime) -> tuple[int, float] | None:
        if self.budget_source is None:
            return 0, 0.0
        try:
            return await self.budget_source.spent(key_id, since)  # bounded by the source (database_timeout)
        except Exception as exc:  # noqa: BLE001 - whatever the store raises, requests go on; retried later
            log.warning("could not read budget usage for key %s (%s); counting from zero for now", key_id, exc)
        return None

    def rate_error(self, bucket: Bucket, kind: str, retry_after: float) -> GatewayError:
        lim = bucket.limits
        what = {
            "rpm": f"{lim.rpm} requests per {self.per}",
            "tpm": f"{lim.tpm} tokens per {self.per}",
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
            f"Budget exhausted for key {principal.name!r}: {what} used this {principal.budget_period} "
            f"(requests in progress included); it resets at {end.isoformat()}.",
            code="budget_exceeded", retry_after=max((end - now).total_seconds(), 1.0),
        )


def ceil_seconds(retry_after: float) -> int:
    """``Retry-After`` header value: whole seconds, at least 1."""
    return max(1, math.ceil(retry_after))
