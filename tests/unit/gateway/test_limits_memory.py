"""MemoryLimiter: sliding windows, parallel slots, per-model buckets, budgets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dragoman.core.types import ChatRequest, Message, Role, Sampling, TextPart
from dragoman.errors import ErrorKind, GatewayError
from dragoman.gateway.keys import Principal
from dragoman.gateway.limits import (
    NO_LEASE,
    NO_RESERVATION,
    Lease,
    MemoryLimiter,
    RateLimits,
    Reservation,
    Reserver,
    ceil_seconds,
)
from dragoman.gateway.store import Store
from dragoman.gateway.usage import PriceTable, UsageRecord
from dragoman.gateway.usage_store import UsageStore
from tests.gateway_fixtures import FakeClock, FakeNow


def key(**limits: object) -> Principal:
    return Principal(key_id="key_1", name="alice", **limits)  # type: ignore[arg-type]


async def refused(limiter: MemoryLimiter, principal: Principal, model: str = "up/m") -> GatewayError:
    with pytest.raises(GatewayError) as info:
        await limiter.acquire(principal, model)
    assert info.value.kind is ErrorKind.RATE_LIMITED and info.value.status == 429
    assert info.value.retry_after is not None and info.value.retry_after > 0
    return info.value


async def test_no_limits_costs_nothing() -> None:
    limiter = MemoryLimiter()
    assert await limiter.acquire(key(), "up/m") is NO_LEASE
    assert await limiter.acquire(Principal.anonymous(), "up/m") is NO_LEASE


async def test_rpm_window_slides() -> None:
    clock = FakeClock()
    limiter = MemoryLimiter(clock=clock)
    p = key(rpm=3)
    for offset in (0, 10, 20):
        clock.now = 1000 + offset
        await (await limiter.acquire(p, "up/m")).release(0)
    clock.now = 1030
    err = await refused(limiter, p)
    assert err.retry_after == pytest.approx(30)  # the request at t=0 leaves the window at t=60
    assert "3 requests per minute" in err.message and "alice" in err.message
    assert err.code == "rate_limit_exceeded"
    clock.now = 1060.001
    await limiter.acquire(p, "up/m")  # one slot freed
    err = await refused(limiter, p)
    assert err.retry_after == pytest.approx(10 - 0.001)


async def test_refused_requests_do_not_count() -> None:
    clock = FakeClock()
    limiter = MemoryLimiter(clock=clock)
    p = key(rpm=1)
    await limiter.acquire(p, "up/m")
    for _ in range(5):
        await refused(limiter, p)
    clock.advance(60.01)
    await limiter.acquire(p, "up/m")


async def test_tpm_counts_released_tokens() -> None:
    clock = FakeClock()
    limiter = MemoryLimiter(clock=clock)
    p = key(tpm=100)
    lease = await limiter.acquire(p, "up/m")
    await lease.release(60)
    clock.advance(10)
    lease = await limiter.acquire(p, "up/m")  # 60 < 100: admitted
    await lease.release(50)  # 110 now: over
    err = await refused(limiter, p)
    assert "100 tokens per minute" in err.message
    assert err.retry_after == pytest.approx(50)  # when the first 60 tokens leave, 50 < 100
    clock.advance(50)
    await limiter.acquire(p, "up/m")


async def test_parallel_slots_and_idempotent_release() -> None:
    limiter = MemoryLimiter()
    p = key(max_parallel=2)
    a = await limiter.acquire(p, "up/m")
    b = await limiter.acquire(p, "up/m")
    err = await refused(limiter, p)
    assert "2 parallel requests" in err.message
    await a.release(0)
    await a.release(0)  # a second release must not free a second slot
    c = await limiter.acquire(p, "up/m")
    await refused(limiter, p)
    for lease in (b, c):
        await lease.release(0)
    assert not limiter._active


async def test_per_model_buckets() -> None:
    shared = MemoryLimiter()
    separate = MemoryLimiter(per_model=True)
    p = key(rpm=1)
    await shared.acquire(p, "up/a")
    await refused(shared, p, "up/b")
    await separate.acquire(p, "up/a")
    await separate.acquire(p, "up/b")
    await refused(separate, p, "up/a")


async def test_model_limits_are_shared_by_everyone() -> None:
    limiter = MemoryLimiter(model_limits={"up/big-*": RateLimits(max_parallel=1)})
    alice, bob = key(), Principal(key_id="key_2", name="bob")
    lease = await limiter.acquire(alice, "up/big-1")
    err = await refused(limiter, bob, "up/big-2")
    assert "model 'up/big-*'" in err.message
    assert await limiter.acquire(bob, "up/small") is NO_LEASE
    await lease.release(0)
    await limiter.acquire(Principal.anonymous(), "up/big-2")


def test_rate_limits_validate() -> None:
    with pytest.raises(ValueError):
        RateLimits(rpm=0)
    assert not RateLimits()
    assert ceil_seconds(0.01) == 1 and ceil_seconds(2.1) == 3


class Spent:
    """A BudgetSource with fixed figures (the real one is tested below on SQLite)."""

    def __init__(self, tokens: int, cost: float) -> None:
        self.calls = 0
        self.figures = (tokens, cost)

    async def spent(self, key_id: str, since: datetime) -> tuple[int, float]:
        self.calls += 1
        return self.figures


async def test_token_budget_starts_from_stored_usage_and_resets() -> None:
    now = FakeNow(datetime(2025, 6, 14, 23, 0, tzinfo=UTC))
    source = Spent(900, 0.0)
    limiter = MemoryLimiter(budget_source=source, now=now)
    p = key(budget_tokens=1000, budget_period="day")
    lease = await limiter.acquire(p, "up/m")
    await lease.release(150)
    err = await refused(limiter, p)
    assert err.code == "budget_exceeded"
    assert "1050 of 1000 tokens" in err.message and "this day" in err.message
    assert err.retry_after == pytest.approx(3600)  # until midnight UTC
    assert source.calls == 1
    source.figures = (0, 0.0)
    now.advance(hours=1, seconds=1)  # a new day: counted afresh
    await limiter.acquire(p, "up/m")
    assert source.calls == 2


async def test_cost_budget() -> None:
    limiter = MemoryLimiter(budget_source=Spent(0, 4.5), now=FakeNow())
    p = key(budget_cost=5.0, budget_period="month")
    lease: Lease = await limiter.acquire(p, "up/m")
    await lease.release(10, cost=0.6)
    err = await refused(limiter, p)
    assert "5.1000 of 5.0000" in err.message and "this month" in err.message
    assert err.retry_after == pytest.approx((datetime(2025, 7, 1, tzinfo=UTC) - FakeNow().now).total_seconds())


class Broken:
    async def spent(self, key_id: str, since: datetime) -> tuple[int, float]:
        raise OSError("database down")


async def test_budget_source_failure_does_not_fail_requests() -> None:
    limiter = MemoryLimiter(budget_source=Broken(), now=FakeNow())
    p = key(budget_tokens=100, budget_period="day")
    lease = await limiter.acquire(p, "up/m")
    await lease.release(100)
    await refused(limiter, p)  # what this process counted still applies


async def test_budget_from_the_usage_table(sqlite_store: Store) -> None:
    now = FakeNow()
    usage = UsageStore(sqlite_store)
    await usage.write_usage([
        UsageRecord("openai", "m", ts=now.now - timedelta(hours=1), key_id="key_1", prompt_tokens=300,
                    completion_tokens=300, cost=1.0),
        UsageRecord("openai", "m", ts=now.now - timedelta(days=1), key_id="key_1", prompt_tokens=10_000),
        UsageRecord("openai", "m", ts=now.now, key_id="key_2", prompt_tokens=10_000),
    ])
    limiter = MemoryLimiter(budget_source=usage, now=now)
    lease = await limiter.acquire(key(budget_tokens=1000, budget_period="day"), "up/m")
    await lease.release(400)
    err = await refused(limiter, key(budget_tokens=1000, budget_period="day"))
    assert "1000 of 1000 tokens" in err.message


# ----------------------------------------------------------------- budget reservations


def chat(text: str, max_tokens: int | None = None, *, default: int | None = None) -> ChatRequest:
    return ChatRequest(model="m", messages=[Message(Role.USER, [TextPart(text)])],
                       sampling=Sampling(max_tokens=max_tokens), defaults=Sampling(max_tokens=default))


def test_a_reservation_is_the_prompt_and_the_most_the_answer_may_take() -> None:
    reserver = Reserver(100, {"lab/*": 7})
    forty = "x" * 40  # ten tokens by the estimate
    assert reserver.reserve("up/m", chat(forty, 5)) == Reservation(15)
    assert reserver.reserve("up/m", chat(forty, default=16)) == Reservation(26)  # the dialect's default
    assert reserver.reserve("up/m", chat(forty)) == Reservation(110)  # reserve_tokens
    assert reserver.reserve("lab/llama", chat(forty)) == Reservation(17)  # the model's own
    assert reserver.reserve("up/m", None) == NO_RESERVATION  # not a chat (embeddings)
    priced = Reserver(prices=PriceTable({"up/*": {"input": 1_000_000, "output": 2_000_000}}))
    assert priced.reserve("up/m", chat(forty, 5)) == Reservation(15, 10 * 1.0 + 5 * 2.0)
    with pytest.raises(ValueError, match="reserve_tokens: a reservation"):
        Reserver(-1)


async def test_a_budget_holds_the_reservations_of_requests_in_progress() -> None:
    limiter = MemoryLimiter(budget_source=Spent(0, 0.0), now=FakeNow())
    p = key(budget_tokens=100, budget_period="day")
    request = chat("x" * 40, 10)  # reserves 20
    leases = [await limiter.acquire(p, "up/m", request) for _ in range(5)]  # 0, 20, ..., 80: under 100
    err = await refused(limiter, p)  # 100 reserved: a sixth would overspend
    assert "100 of 100 tokens used this day (requests in progress included)" in err.message
    for lease in leases[:3]:
        await lease.release(12)  # each spent 12 of its 20
    await limiter.acquire(p, "up/m", request)  # 3 * 12 + 2 * 20 = 76: admitted, 96
    await limiter.acquire(p, "up/m", request)  # 96: admitted, 116, past the budget by one reservation
    err = await refused(limiter, p)
    assert "116 of 100 tokens" in err.message


async def test_a_reservation_settles_on_failures_and_cost_budgets_reserve_too() -> None:
    prices = PriceTable({"up/*": {"input": 1_000_000, "output": 1_000_000}})  # one cost unit a token
    limiter = MemoryLimiter(budget_source=Spent(0, 0.0), now=FakeNow(), reserver=Reserver(prices=prices))
    p = key(budget_cost=30.0, budget_period="month")
    request = chat("x" * 40, 10)  # 20 tokens, 20 cost units
    failed = await limiter.acquire(p, "up/m", request)
    second = await limiter.acquire(p, "up/m", request)  # 20 < 30
    err = await refused(limiter, p)
    assert "40.0000 of 30.0000 cost units" in err.message
    await failed.release(0)  # an error before any token: nothing spent
    await failed.release(0)  # once only
    third = await limiter.acquire(p, "up/m", request)  # 20 again
    await second.release(5, cost=5.0)
    await third.release(5, cost=5.0)
    await limiter.acquire(p, "up/m", request)  # 10 spent
