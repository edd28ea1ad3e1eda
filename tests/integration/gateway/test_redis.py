"""RedisLimiter shared by several instances, and key-cache invalidation over Redis pub/sub."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dragoman.core.types import ChatRequest, Message, Role, Sampling, TextPart
from dragoman.errors import ErrorKind, GatewayError
from dragoman.gateway.keys import KeyService, Principal
from dragoman.gateway.limits import NO_LEASE, RateLimits, RedisLimiter, Reserver
from dragoman.gateway.redis_client import connect_redis
from dragoman.gateway.store import Store
from dragoman.gateway.usage import PriceTable, UsageRecord
from dragoman.gateway.usage_store import UsageStore
from tests.gateway_fixtures import FakeClock
from tests.services import ensure_redis

RedisEnv = tuple[Any, str]


def key(**limits: object) -> Principal:
    return Principal(key_id="key_1", name="alice", **limits)  # type: ignore[arg-type]


async def refused(limiter: RedisLimiter, principal: Principal, model: str = "up/m") -> GatewayError:
    with pytest.raises(GatewayError) as info:
        await limiter.acquire(principal, model)
    assert info.value.kind is ErrorKind.RATE_LIMITED
    assert info.value.retry_after is not None and info.value.retry_after > 0
    return info.value


async def test_rpm_is_shared_and_slides(redis_env: RedisEnv) -> None:
    client, prefix = redis_env
    a = RedisLimiter(client, prefix=prefix, window=1.0)
    b = RedisLimiter(client, prefix=prefix, window=1.0)  # a second gateway instance
    p = key(rpm=3)
    await a.acquire(p, "up/m")
    await asyncio.sleep(0.4)
    await b.acquire(p, "up/m")
    await a.acquire(p, "up/m")
    err = await refused(b, p)
    assert "3 requests per 1 seconds" in err.message
    assert err.retry_after is not None and 0.4 < err.retry_after <= 0.6
    await refused(a, p)
    await asyncio.sleep(err.retry_after + 0.05)  # the oldest request leaves the window
    await b.acquire(p, "up/m")  # its slot is free again, for either instance
    await refused(a, p)  # the two later ones are still in it


async def test_tpm_is_shared(redis_env: RedisEnv) -> None:
    client, prefix = redis_env
    a = RedisLimiter(client, prefix=prefix)
    b = RedisLimiter(client, prefix=prefix)
    p = key(tpm=100)
    await (await a.acquire(p, "up/m")).release(70)
    lease = await b.acquire(p, "up/m")
    await lease.release(40)
    err = await refused(a, p)
    assert "100 tokens per minute" in err.message
    assert 58 <= (err.retry_after or 0) <= 61


async def test_parallel_slots_are_shared_and_released(redis_env: RedisEnv) -> None:
    client, prefix = redis_env
    a = RedisLimiter(client, prefix=prefix)
    b = RedisLimiter(client, prefix=prefix)
    p = key(max_parallel=2)
    one = await a.acquire(p, "up/m")
    two = await b.acquire(p, "up/m")
    await refused(a, p)
    await one.release(0)
    await one.release(0)
    three = await a.acquire(p, "up/m")
    await refused(b, p)
    await two.release(0)
    await three.release(0)


async def test_parallel_slot_of_a_dead_instance_expires(redis_env: RedisEnv) -> None:
    client, prefix = redis_env
    crashing = RedisLimiter(client, prefix=prefix, lease_ttl=0.3)
    p = key(max_parallel=1)
    await crashing.acquire(p, "up/m")  # never released
    await refused(crashing, p)
    await asyncio.sleep(0.35)
    await crashing.acquire(p, "up/m")


async def test_per_model_and_model_limits(redis_env: RedisEnv) -> None:
    client, prefix = redis_env
    limiter = RedisLimiter(client, prefix=prefix, per_model=True,
                           model_limits={"up/big*": RateLimits(rpm=1)})
    p = key(rpm=1)
    await limiter.acquire(p, "up/a")
    await limiter.acquire(p, "up/b")
    await refused(limiter, p, "up/a")
    other = Principal(key_id="key_2", name="bob")
    await limiter.acquire(other, "up/big-1")
    err = await refused(limiter, Principal.anonymous(), "up/big-2")
    assert "model 'up/big*'" in err.message
    assert await limiter.acquire(other, "up/small") is NO_LEASE


async def test_budget_seeded_from_usage_and_shared(redis_env: RedisEnv, sqlite_store: Store) -> None:
    client, prefix = redis_env
    usage = UsageStore(sqlite_store)
    now = datetime.now(UTC)
    await usage.write_usage([UsageRecord("openai", "m", ts=now - timedelta(minutes=1), key_id="key_1",
                                         prompt_tokens=800, cost=2.0)])
    a = RedisLimiter(client, prefix=prefix, budget_source=usage)
    b = RedisLimiter(client, prefix=prefix, budget_source=usage)
    p = key(budget_tokens=1000, budget_cost=10.0, budget_period="month")
    lease = await a.acquire(p, "up/m")
    await lease.release(150, cost=1.0)
    lease = await b.acquire(p, "up/m")  # 950 < 1000
    await lease.release(100, cost=1.0)
    err = await refused(a, p)
    assert err.code == "budget_exceeded" and "1050 of 1000 tokens" in err.message
    assert err.retry_after is not None and err.retry_after >= 1
    cost_only = key(budget_cost=4.0, budget_period="month")
    err = await refused(b, cost_only)  # 2.0 stored + 2.0 counted
    assert "4.0000 of 4.0000" in err.message


async def test_redis_down_fails_open_or_closed() -> None:
    dead = connect_redis("redis://127.0.0.1:1/0")  # nothing listens on port 1
    clock = FakeClock()
    try:
        open_limiter = RedisLimiter(dead, prefix="dm-dead:", clock=clock)
        started = time.monotonic()
        for _ in range(20):
            lease = await open_limiter.acquire(key(rpm=1), "up/m")
            await lease.release(10)
        assert time.monotonic() - started < 1.0  # after the first failure Redis is skipped
        closed = RedisLimiter(dead, prefix="dm-dead:", fail_open=False, clock=clock)
        for _ in range(2):
            with pytest.raises(GatewayError) as info:
                await closed.acquire(key(rpm=1), "up/m")
            assert info.value.status == 503
    finally:
        await dead.aclose()


async def test_redis_back_after_an_outage(redis_env: RedisEnv) -> None:
    client, prefix = redis_env
    clock = FakeClock()
    limiter = RedisLimiter(client, prefix=prefix, clock=clock)
    limiter._down_until = clock.now + 5  # as after a failure
    p = key(rpm=1)
    assert await limiter.acquire(p, "up/m") is NO_LEASE  # skipped while marked down
    clock.advance(5)
    await limiter.acquire(p, "up/m")
    await refused(limiter, p)  # counted in Redis again


async def test_revocation_reaches_every_instance_at_once(redis_env: RedisEnv, sqlite_store: Store,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    _, prefix = redis_env
    url = ensure_redis()
    assert url is not None
    client = connect_redis(url, timeout=0.3)  # short socket timeouts must not break the listener
    admin = KeyService(sqlite_store, redis=client, redis_prefix=prefix)
    gateway = KeyService(sqlite_store, redis=client, redis_prefix=prefix, cache_ttl=3600)
    await gateway.start()
    try:
        info, secret = await admin.create("bob")
        assert (await gateway.authenticate(secret)).key_id == info.id  # cached for an hour
        await asyncio.sleep(1.2)  # a quiet channel for longer than the socket timeout
        assert not [r for r in caplog.records if r.name == "dragoman.gateway.keys"]  # no reconnects
        await admin.update("bob", {"rpm": 7})
        deadline = time.monotonic() + 5
        while (await gateway.authenticate(secret)).rpm != 7:
            assert time.monotonic() < deadline, "update did not reach the other instance"
            await asyncio.sleep(0.01)
        await admin.revoke("bob")
        while True:
            try:
                await gateway.authenticate(secret)
            except GatewayError as exc:
                assert exc.kind is ErrorKind.AUTHENTICATION
                break
            assert time.monotonic() < deadline, "revocation did not reach the other instance"
            await asyncio.sleep(0.01)
    finally:
        await gateway.aclose()
        await admin.aclose()
        await client.aclose()


# ------------------------------------------------------------------------- under load


async def outcomes(limiter: RedisLimiter, principal: Principal, count: int,
                   request: ChatRequest | None = None) -> tuple[list[Any], list[GatewayError]]:
    """``count`` acquires at once: the leases, and the refusals."""
    async def one() -> Any:
        try:
            return await limiter.acquire(principal, "up/m", request)
        except GatewayError as exc:
            return exc

    results = await asyncio.gather(*(one() for _ in range(count)))
    return [r for r in results if not isinstance(r, GatewayError)], [r for r in results if isinstance(r, GatewayError)]


async def test_a_burst_waits_for_a_small_pool_and_stays_limited(redis_env: RedisEnv,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    _, prefix = redis_env
    url = ensure_redis()
    assert url is not None
    client = connect_redis(url, max_connections=4)  # redis-py's own pool would fail past 4
    try:
        limiter = RedisLimiter(client, prefix=prefix)
        leases, refusals = await outcomes(limiter, key(rpm=60), 200)
        assert len(leases) == 60 and NO_LEASE not in leases  # none admitted "without limits"
        assert len(refusals) == 140 and all(e.kind is ErrorKind.RATE_LIMITED for e in refusals)
        await refused(limiter, key(rpm=60))
        assert not [r for r in caplog.records if r.name.startswith("dragoman.gateway.limits")]
    finally:
        await client.aclose()


async def test_a_wait_for_a_turn_that_runs_out_refuses_that_request_only(redis_env: RedisEnv) -> None:
    client, prefix = redis_env
    limiter = RedisLimiter(client, prefix=prefix, max_inflight=1, pool_wait=0.0005)
    leases, refusals = await outcomes(limiter, key(rpm=10), 100)
    busy = [e for e in refusals if e.kind is ErrorKind.OVERLOADED]
    assert busy and all(e.status == 503 and e.message == "The gateway is busy; try again shortly."
                        and e.retry_after == 1.0 for e in busy)
    assert 0 < len(leases) <= 10 and NO_LEASE not in leases
    # Redis was never taken for down: the key stays limited.
    for _ in range(10 - len(leases)):
        await limiter.acquire(key(rpm=10), "up/m")
    await refused(limiter, key(rpm=10))


def chat(text: str, max_tokens: int | None = None) -> ChatRequest:
    return ChatRequest(model="m", messages=[Message(Role.USER, [TextPart(text)])],
                       sampling=Sampling(max_tokens=max_tokens))


async def test_budget_reservations_are_atomic_and_settle(redis_env: RedisEnv, sqlite_store: Store) -> None:
    client, prefix = redis_env
    usage = UsageStore(sqlite_store)
    a = RedisLimiter(client, prefix=prefix, budget_source=usage)
    b = RedisLimiter(client, prefix=prefix, budget_source=usage)  # another instance
    p = key(budget_tokens=100, budget_period="day")
    request = chat("x" * 40, 10)  # reserves 20 tokens
    first, _ = await outcomes(a, p, 10, request)
    second, refusals = await outcomes(b, p, 10, request)
    assert len(first) + len(second) == 5  # 0, 20, 40, 60, 80: the sixth would start at 100
    assert all(e.code == "budget_exceeded" and "100 of 100 tokens" in e.message for e in refusals)
    for lease in first + second:
        await lease.release(12)  # each spent 12 of its 20: 60 in all
    more, _ = await outcomes(a, p, 10, request)
    assert len(more) == 2  # 60 -> 80 -> 100
    await more[0].release(0)  # failed before any token: its 20 come back
    await a.acquire(p, "up/m", request)
    err = await refused(b, p)
    assert "100 of 100 tokens" in err.message


async def test_cost_budget_reserves_the_price(redis_env: RedisEnv, sqlite_store: Store) -> None:
    client, prefix = redis_env
    prices = PriceTable({"up/*": {"input": 1_000_000, "output": 1_000_000}})  # one cost unit a token
    limiter = RedisLimiter(client, prefix=prefix, budget_source=UsageStore(sqlite_store),
                           reserver=Reserver(prices=prices))
    p = key(budget_cost=30.0, budget_period="month")
    leases, refusals = await outcomes(limiter, p, 5, chat("x" * 40, 10))  # 20 units each
    assert len(leases) == 2 and len(refusals) == 3
    assert "40.0000 of 30.0000 cost units" in refusals[0].message
    await leases[0].release(5, cost=5.0)
    await leases[1].release(5, cost=5.0)
    await limiter.acquire(p, "up/m", chat("x" * 40, 10))  # 10 spent
