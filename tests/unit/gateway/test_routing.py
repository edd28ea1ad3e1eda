"""Routing pieces on their own: cooldown stores, strategies, the router's walk, route resolution.

Backends here are small in-process fakes of the ``Backend`` interface (scripted failures); the
real-HTTP fault tests are in tests/integration/test_routing.py.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

from dragoman.backends.base import Backend, BackendDeps, CallOptions, NoSettings, Timeouts
from dragoman.core.events import Event, MessageEnd, MessageStart
from dragoman.core.models import ModelInfo
from dragoman.core.types import ChatRequest, FinishReason, Message, Role, TextPart, Usage
from dragoman.errors import ErrorKind, GatewayError
from dragoman.gateway.balance import Balancer
from dragoman.gateway.catalog import Catalog, LiveCatalog
from dragoman.gateway.cooldown import CooldownSettings, MemoryCooldownStore, RedisCooldownStore, State
from dragoman.gateway.deployments import Deployment, DeploymentSpec, ModelRoute, ModelSpec, Step, Target
from dragoman.gateway.redis_client import connect_redis
from dragoman.gateway.registry import ModelRegistry
from dragoman.gateway.router import Router, RoutingSettings
from tests.gateway_fixtures import FakeClock
from tests.services import ensure_redis

# ---------------------------------------------------------------------------- fakes


class Scripted(Backend):
    """Answers from a script of outcomes per model: an ErrorKind raises, None answers."""

    type = "scripted"

    def __init__(self, name: str, models: list[str], script: dict[str, list[ErrorKind | None]] | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(name, NoSettings(), BackendDeps())
        self.models = models
        self.script = script or {}
        self.retry_after = retry_after
        self.calls: list[str] = []

    async def list_models(self) -> list[ModelInfo]:
        return [ModelInfo(name=m) for m in self.models]

    async def stream(self, request: ChatRequest, model: str, options: CallOptions) -> AsyncIterator[Event]:
        self.calls.append(model)
        steps = self.script.get(model, [])
        outcome = steps.pop(0) if steps else None
        if outcome is not None:
            raise GatewayError(outcome, f"{self.name}/{model} failed", retry_after=self.retry_after)
        yield MessageStart("id", model, 0)
        yield MessageEnd(FinishReason.STOP, Usage())


def request() -> ChatRequest:
    return ChatRequest(model="m", messages=[Message(Role.USER, [TextPart("hi")])])


def deployment(backend: Backend, model: str, *, weight: float = 1.0, priority: int = 0) -> Deployment:
    return Deployment(Target(backend, model, ModelInfo(name=model)), weight, priority)


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def router(cooldowns: MemoryCooldownStore | None = None, **settings: Any) -> tuple[Router, Sleeps]:
    sleeps = Sleeps()
    return Router(RoutingSettings(**settings), cooldowns=cooldowns, balancer=Balancer(rng=random.Random(7)),
                  sleep=sleeps), sleeps


async def start(r: Router, route: ModelRoute) -> tuple[str, int]:
    started = await r.start(route, lambda step, t: (request(), CallOptions()), started_at=0.0)
    await started.aclose()
    return started.target.id, started.attempts


# ------------------------------------------------------------------------- cooldown


async def test_memory_breaker_opens_after_n_failures_in_the_window() -> None:
    clock = FakeClock()
    store = MemoryCooldownStore(CooldownSettings(failures=3, window=10, period=5), clock=clock)
    assert not await store.record_failure("d")
    clock.advance(11)  # the first failure leaves the window
    assert not await store.record_failure("d")
    assert not await store.record_failure("d")
    assert await store.check(["d", "other"]) == {}
    assert await store.record_failure("d")
    status = (await store.check(["d"]))["d"]
    assert status.state is State.OPEN and status.retry_in == pytest.approx(5)
    assert not await store.record_failure("d")  # late failures of in-flight requests change nothing


async def test_memory_half_open_lets_one_probe_through() -> None:
    clock = FakeClock()
    store = MemoryCooldownStore(CooldownSettings(failures=1, window=10, period=5), clock=clock)
    await store.record_failure("d")
    clock.advance(5)
    assert (await store.check(["d"]))["d"].state is State.HALF_OPEN
    assert await store.try_probe("d")
    assert not await store.try_probe("d")
    assert (await store.check(["d"]))["d"].state is State.OPEN  # while the probe is out
    assert await store.record_failure("d")  # the probe failed: open again, for a full period
    assert (await store.check(["d"]))["d"].retry_in == pytest.approx(5)
    clock.advance(5)
    assert await store.try_probe("d")
    await store.record_success("d")
    assert await store.check(["d"]) == {}
    assert await store.record_failure("d")  # closed, so its first failure (of 1) opens it again


async def test_memory_forgets_an_unprobed_half_open_deployment() -> None:
    clock = FakeClock()
    settings = CooldownSettings(failures=1, window=10, period=5)
    store = MemoryCooldownStore(settings, clock=clock)
    await store.record_failure("d")
    clock.advance(settings.period + settings.forget_after + 1)
    assert await store.check(["d"]) == {}


async def test_redis_breaker_is_shared(redis_env: tuple[Any, str]) -> None:
    client, prefix = redis_env
    settings = CooldownSettings(failures=2, window=10, period=0.3)
    one = RedisCooldownStore(client, settings, prefix=prefix)
    two = RedisCooldownStore(client, settings, prefix=prefix)
    assert not await one.record_failure("b/m")
    assert await two.record_failure("b/m")  # failures of both instances count together
    status = (await one.check(["b/m", "b/other"]))
    assert list(status) == ["b/m"] and status["b/m"].state is State.OPEN
    await asyncio.sleep(0.35)
    assert (await two.check(["b/m"]))["b/m"].state is State.HALF_OPEN
    assert await one.try_probe("b/m")
    assert not await two.try_probe("b/m")
    assert (await two.check(["b/m"]))["b/m"].state is State.OPEN
    await one.record_success("b/m")
    assert await two.check(["b/m"]) == {}
    assert one.using_redis and two.using_redis


async def test_a_burst_waits_for_the_pool_and_is_not_taken_for_redis_down(
        redis_env: tuple[Any, str], caplog: pytest.LogCaptureFixture) -> None:
    _, prefix = redis_env
    url = ensure_redis()
    assert url is not None
    settings = CooldownSettings(failures=1, window=10, period=30)
    small = RedisCooldownStore(connect_redis(url, max_connections=2), settings, prefix=prefix)
    impatient = RedisCooldownStore(connect_redis(url, max_connections=1), settings, prefix=prefix + "i:",
                                   pool_wait=0.0005)
    try:
        assert await small.record_failure("b/m")
        statuses = await asyncio.gather(*(small.check(["b/m"]) for _ in range(200)))
        assert all(s["b/m"].state is State.OPEN for s in statuses)  # all from Redis, waiting their turn
        await asyncio.gather(*(impatient.check(["b/m"]) for _ in range(100)))
        assert "no Redis connection free within 0.0s; using memory for this request" in caplog.text
        assert small.using_redis and impatient.using_redis  # neither was taken for Redis being down
        assert "Redis unavailable" not in caplog.text
    finally:
        await small.aclose()
        await impatient.aclose()


async def test_redis_down_falls_back_to_memory(caplog: pytest.LogCaptureFixture) -> None:
    store = RedisCooldownStore(connect_redis("redis://127.0.0.1:1/0"), CooldownSettings(failures=1, window=10,
                                                                                       period=30))
    try:
        await store.start()
        assert not store.using_redis
        assert await store.record_failure("d")
        assert (await store.check(["d"]))["d"].state is State.OPEN
        assert "Redis unavailable" in caplog.text
    finally:
        await store.aclose()


# ----------------------------------------------------------------------- strategies


def test_least_busy_picks_the_fewest_in_flight() -> None:
    backend = Scripted("x", [])
    a, b = deployment(backend, "a"), deployment(backend, "b")
    balancer = Balancer(rng=random.Random(1))
    balancer.begin(a.id)
    assert {balancer.choose("least_busy", [a, b]).id for _ in range(20)} == {b.id}
    balancer.begin(b.id)
    balancer.begin(b.id)
    balancer.end(a.id)
    assert balancer.choose("least_busy", [a, b]).id == a.id
    assert balancer.in_flight == {b.id: 2}


def test_lowest_latency_measures_everyone_then_prefers_the_fastest() -> None:
    backend = Scripted("x", [])
    a, b = deployment(backend, "a"), deployment(backend, "b")
    balancer = Balancer(rng=random.Random(3), explore=0.0)
    balancer.observe(a.id, 0.5)
    assert balancer.choose("lowest_latency", [a, b]).id == b.id  # unmeasured first
    balancer.observe(b.id, 0.1)
    assert balancer.choose("lowest_latency", [a, b]).id == b.id
    for _ in range(10):
        balancer.observe(b.id, 1.0)  # b slows down: its average follows
    assert balancer.choose("lowest_latency", [a, b]).id == a.id


def test_weighted_random_follows_the_weights() -> None:
    backend = Scripted("x", [])
    a, b = deployment(backend, "a", weight=3), deployment(backend, "b", weight=1)
    balancer = Balancer(rng=random.Random(5))
    picks = [balancer.choose("weighted_random", [a, b]).id for _ in range(4000)]
    assert 0.70 < picks.count(a.id) / 4000 < 0.80


# ----------------------------------------------------------------------------- router


async def test_every_deployment_once_before_any_retry() -> None:
    backend = Scripted("x", ["a", "b"], {"a": [ErrorKind.OVERLOADED] * 5, "b": [ErrorKind.OVERLOADED] * 5})
    r, sleeps = router(retries=2, backoff=1.0, backoff_max=1.5)
    route = ModelRoute("m", (Step("m", (deployment(backend, "a"), deployment(backend, "b"))),))
    with pytest.raises(GatewayError) as info:
        await start(r, route)
    assert info.value.kind is ErrorKind.OVERLOADED
    assert sorted(backend.calls[:2]) == ["a", "b"] and len(backend.calls) == 4
    assert len(sleeps.delays) == 2  # no wait moving to b; a backoff before each retry
    assert 0.5 <= sleeps.delays[0] <= 1.0 and 0.75 <= sleeps.delays[1] <= 1.5  # doubled, capped, jittered


async def test_retry_after_is_waited_for_up_to_the_cap() -> None:
    backend = Scripted("x", ["a"], {"a": [ErrorKind.RATE_LIMITED]}, retry_after=3.0)
    r, sleeps = router(retries=1, backoff=0.1, max_retry_after=5)
    assert await start(r, ModelRoute("m", (Step("m", (deployment(backend, "a"),)),))) == ("x/a", 2)
    assert sleeps.delays == [3.0]


async def test_request_errors_are_raised_at_once() -> None:
    backend = Scripted("x", ["a", "b"], {"a": [ErrorKind.INVALID_REQUEST]})
    r, _ = router()
    route = ModelRoute("m", (Step("m", (deployment(backend, "a", priority=0), deployment(backend, "b", priority=1))),))
    with pytest.raises(GatewayError) as info:
        await start(r, route)
    assert info.value.kind is ErrorKind.INVALID_REQUEST
    assert backend.calls == ["a"]


async def test_unplannable_targets_are_skipped_and_their_error_kept() -> None:
    backend = Scripted("x", ["a", "b"])
    r, _ = router()
    route = ModelRoute("m", (Step("m", (deployment(backend, "a", priority=0), deployment(backend, "b", priority=1))),))

    def prepare(step: Step, target: Target) -> tuple[ChatRequest, CallOptions]:
        if target.model == "a":
            raise GatewayError(ErrorKind.INVALID_REQUEST, "a does not accept images")
        return request(), CallOptions(Timeouts(1, 2, 3))

    started = await r.start(route, prepare, started_at=0.0)
    await started.aclose()
    assert (started.target.id, started.attempts, backend.calls) == ("x/b", 1, ["b"])
    only_a = ModelRoute("m", (Step("m", (deployment(backend, "a"),)),))
    with pytest.raises(GatewayError, match="does not accept images"):
        await r.start(only_a, prepare, started_at=0.0)


async def test_a_successful_probe_closes_the_breaker() -> None:
    clock = FakeClock()
    store = MemoryCooldownStore(CooldownSettings(failures=1, window=10, period=5), clock=clock)
    backend = Scripted("x", ["a", "b"], {"a": [ErrorKind.UPSTREAM_UNAVAILABLE]})
    r, _ = router(store)
    route = ModelRoute("m", (Step("m", (deployment(backend, "a", priority=0), deployment(backend, "b", priority=1))),))
    assert await start(r, route) == ("x/b", 2)
    assert await start(r, route) == ("x/b", 1)  # a is cooling down
    clock.advance(5)
    assert await start(r, route) == ("x/a", 1)  # the probe, which now succeeds
    assert await store.check(["x/a"]) == {}
    assert r.balancer.in_flight == {}


async def test_mid_stream_failures_count_toward_the_cooldown() -> None:
    class Breaks(Scripted):
        async def stream(self, request: ChatRequest, model: str, options: CallOptions) -> AsyncIterator[Event]:
            yield MessageStart("id", model, 0)
            raise GatewayError(ErrorKind.TIMEOUT, "stalled")

    store = MemoryCooldownStore(CooldownSettings(failures=1, window=10, period=5))
    backend = Breaks("x", ["a", "b"])
    r, _ = router(store)
    route = ModelRoute("m", (Step("m", (deployment(backend, "a"), deployment(backend, "b"))),))
    started = await r.start(route, lambda step, t: (request(), CallOptions()), started_at=0.0)
    with pytest.raises(GatewayError):
        try:  # as the answer's reader (the gateway's stream) does: report the failure, then close
            async for _ in started.events:
                pass
        except GatewayError as exc:
            await started.failed(exc)
            raise
        finally:
            await started.aclose()
    assert (await store.check([started.target.id]))[started.target.id].state is State.OPEN
    assert r.balancer.in_flight == {}


# --------------------------------------------------------------------------- registry


async def test_routes_of_models_aliases_and_fallbacks() -> None:
    one, two = Scripted("one", ["a", "b"]), Scripted("two", ["c"])
    aliases = {"chain": ["one/a", "big", "two/c"], "loop": ["loop2"], "loop2": ["loop"]}
    registry = ModelRegistry(LiveCatalog(Catalog.of([one, two], aliases)),
                             models=[ModelSpec("small", (DeploymentSpec("one/a", 2.0), DeploymentSpec("c", 1.0, 1)),
                                               strategy="least_busy", fallbacks=("big", "small")),
                                     ModelSpec("big", (DeploymentSpec("one/b"), DeploymentSpec("gone/x")),
                                               retries=4, fallbacks=("chain",))])
    small = await registry.resolve_route("small")
    assert [s.name for s in small.steps] == ["small", "big"]  # chain's targets were reached already
    assert [(d.id, d.weight, d.priority) for d in small.steps[0].deployments] == [("one/a", 2.0, 0),
                                                                                   ("two/c", 1.0, 1)]
    assert small.steps[0].strategy == "least_busy" and small.steps[1].retries == 4
    assert [t.id for t in small.targets()] == ["one/a", "two/c", "one/b"]
    chain = await registry.resolve_route("chain")
    assert [s.name for s in chain.steps] == ["one/a", "big", "two/c"]
    assert chain.steps[0].retries == 0  # a concrete step with somewhere else to go is tried once
    alone = await registry.resolve_route("one/a")
    assert alone.steps[0].retries is None  # alone: the routing default
    with pytest.raises(GatewayError) as info:
        await registry.resolve_route("loop")
    assert info.value.kind is ErrorKind.NOT_FOUND
    entries = {e.id: e.alias_of for e in registry.entries()}
    assert entries["small"] == "one/a" and entries["chain"] == "one/a"
