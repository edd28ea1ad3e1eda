"""Choosing a deployment and getting a first event out of it: load balancing, retries,
fallbacks and cooldowns.

A request walks its :class:`~dragoman.gateway.deployments.ModelRoute` step by step (the model, then its
fallbacks). Within a step:

1. Deployments that are cooling down are skipped (only when the route has more than one
   deployment: with nowhere else to go, failing fast helps no one). A half-open one lets one
   request through as a probe.
2. Among the rest, the lowest ``priority`` wins, then the step's strategy picks one
   (:mod:`dragoman.gateway.balance`).
3. Every usable deployment is tried once, at once, before any is tried again. Then up to
   ``retries`` further attempts follow, each after an exponential backoff with jitter
   (``backoff`` doubling up to ``backoff_max``; at least the upstream's ``retry-after``).
4. An upstream asking to wait longer than ``max_retry_after`` is not retried: the request moves
   on to another deployment or the next step, or the client gets the 429 and its ``retry-after``.
   Nor is a deployment that timed out (waiting again would multiply the client's wait).

What moves on: connect errors, 429, 5xx, timeouts (retryable, and counted toward the
deployment's cooldown), and a context window too small (``CONTEXT_TOO_LONG``: other deployments
of the step and then the fallbacks are tried, a bigger model usually being among them; not a
failure of the deployment). What does not: a 4xx the request caused (invalid request, auth,
permission, not found, payload too large) reaches the client at once.

All of this happens only before the first event is handed out, so a client never sees half an
answer twice. A failure after it ends the stream with an error (and counts toward the cooldown:
the stream's owner reports it through ``Router.stream_failed``).

Each attempt, and the answer after it, ends by the request's total deadline (``CallOptions.deadline``)
whatever the backend does; once it passes, the request ends (``DeadlineExceeded``: no further
attempt, no cooldown counted).

``Started.overhead`` is the time dragoman itself spent before the answer started: from the
request's arrival to the first event, less the time spent waiting on upstreams (every attempt,
from the call to its first event or failure) and less retry backoff. So it is parsing, auth,
planning and routing decisions, cooldown look-ups (a Redis round trip when shared) included.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from dragoman.backends.base import CallOptions, within_deadline
from dragoman.config import Strategy
from dragoman.core.events import Event
from dragoman.core.types import ChatRequest, EmbeddingRequest, EmbeddingResponse
from dragoman.errors import ErrorKind, GatewayError
from dragoman.gateway.balance import Balancer
from dragoman.gateway.cooldown import CooldownStore, State, Status
from dragoman.gateway.deployments import Deployment, ModelRoute, Step, Target
from dragoman.gateway.logutil import ThrottledLog
from dragoman.tracing import Tracing

log = logging.getLogger("dragoman.router")

P = TypeVar("P")
R = TypeVar("R")

FALLBACK_KINDS = frozenset({ErrorKind.CONTEXT_TOO_LONG})
_CLOSED = Status(State.CLOSED)


@dataclass(slots=True, frozen=True)
class RoutingSettings:
    """Defaults for every step (a ``models:`` entry may override strategy and retries)."""

    strategy: Strategy = "weighted_random"
    retries: int = 2
    backoff: float = 0.25  # seconds before the first retry; doubles each retry
    backoff_max: float = 4.0
    max_retry_after: float = 10.0  # longer upstream retry-after: move on instead of waiting


@dataclass(slots=True, eq=False)
class Started:
    """An answer whose first event came, and the handle its one reader (the gateway's
    ``GatewayChatStream``) reports back through, so that no wrapper sits between it and the
    backend's events: a failure after the first event (:meth:`failed`: counts toward the
    deployment's cooldown) and the end (:meth:`aclose`: closes the upstream call and the
    deployment's in-flight count). The reader stops at ``options.deadline``."""

    router: Router
    target: Target
    request: ChatRequest  # as planned for this target
    first: Event
    events: AsyncIterator[Event]  # the backend's own iterator, after ``first``
    attempts: int
    overhead: float  # seconds dragoman spent itself before the first event (see the module docstring)
    step: Step
    deployment: Deployment
    options: CallOptions  # the call's timeouts and total deadline
    closed: bool = False

    async def failed(self, error: GatewayError) -> None:
        """The answer failed after its first event."""
        if error.retryable:
            await self.router._failed(self.deployment, error)

    async def aclose(self) -> None:
        """End the call (once; also before the rest was read)."""
        if self.closed:
            return
        self.closed = True
        self.router.balancer.end(self.deployment.id)
        await self.events.aclose()  # type: ignore[attr-defined]


@dataclass(slots=True)
class _Outcome(Generic[P, R]):
    result: R
    planned: P
    step: Step
    deployment: Deployment
    attempts: int
    waited: float  # seconds on upstreams and backoff


class Router:
    def __init__(self, settings: RoutingSettings | None = None, *, cooldowns: CooldownStore | None = None,
                 balancer: Balancer | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep, tracing: Tracing | None = None) -> None:
        self.settings = settings or RoutingSettings()
        self.tracing = tracing  # spans per attempt and upstream call, when tracing is on
        self.cooldowns = cooldowns
        self.balancer = balancer or Balancer()
        self._sleep = sleep
        self._attempt_log = ThrottledLog(log, interval=5.0)  # an upstream outage fails many attempts

    def should_try_next(self, error: GatewayError) -> bool:
        return error.retryable or error.kind in FALLBACK_KINDS

    # ------------------------------------------------------------------ chat

    async def start(self, route: ModelRoute, prepare: Callable[[Step, Target], tuple[ChatRequest, CallOptions]],
                    *, started_at: float) -> Started:
        """The first event of the answer from the first deployment that gives one.

        ``prepare`` plans the request for a target (a ``GatewayError`` from it means this target
        cannot serve the request: it is skipped, and that error is the answer when none can)."""

        tracing = self.tracing

        async def call(deployment: Deployment, planned: tuple[ChatRequest, CallOptions]
                       ) -> tuple[Event, AsyncIterator[Event]]:
            target = deployment.target
            span = tracing.upstream("chat", target.backend.type, target.model) if tracing is not None else None
            events = target.backend.stream(planned[0], target.model, planned[1])
            try:
                try:
                    first = await within_deadline(anext(events), planned[1])
                except StopAsyncIteration:
                    raise GatewayError(ErrorKind.UPSTREAM_ERROR,
                                       f"backend {target.backend.name!r} sent nothing") from None
            except BaseException as exc:
                if span is not None and tracing is not None:
                    tracing.failed(span, exc)
                await events.aclose()  # type: ignore[attr-defined]
                raise
            if span is not None and tracing is not None:
                events = tracing.traced_events(span, first, events)
            return first, events

        done = await self._run(route, lambda step, d: prepare(step, d.target), call)
        first, events = done.result
        overhead = max(0.0, time.perf_counter() - started_at - done.waited)
        return Started(self, done.deployment.target, done.planned[0], first, events,
                       done.attempts, overhead, done.step, done.deployment, done.planned[1])

    # ------------------------------------------------------------ embeddings

    async def embed(self, route: ModelRoute, request: EmbeddingRequest,
                    options_for: Callable[[Step, Target], CallOptions]) -> tuple[EmbeddingResponse, Target, int]:
        tracing = self.tracing

        async def call(deployment: Deployment, options: CallOptions) -> EmbeddingResponse:
            target = deployment.target
            span = tracing.upstream("embeddings", target.backend.type, target.model) if tracing is not None else None
            try:
                response = await within_deadline(target.backend.embed(request, target.model, options), options)
            except BaseException as exc:
                if span is not None and tracing is not None:
                    tracing.failed(span, exc)
                raise
            finally:
                self.balancer.end(deployment.id)
            if span is not None and tracing is not None:
                span.set_attribute("gen_ai.usage.input_tokens", response.usage.prompt_tokens)
                span.end()
            return response

        done = await self._run(route, lambda step, d: options_for(step, d.target), call)
        return done.result, done.deployment.target, done.attempts

    # ------------------------------------------------------------- the walk

    async def _run(self, route: ModelRoute, prepare: Callable[[Step, Deployment], P],
                   call: Callable[[Deployment, P], Awaitable[R]]) -> _Outcome[P, R]:
        """Walk the route until a call succeeds (see the module docstring)."""
        settings = self.settings
        cooldowns = self.cooldowns if route.deployment_count > 1 else None
        attempts = 0
        waited = 0.0
        last: GatewayError | None = None
        unplannable: GatewayError | None = None
        cooling: list[float] = []
        for step in route.steps:
            retries_left = settings.retries if step.retries is None else step.retries
            strategy = step.strategy or settings.strategy
            tried: set[str] = set()
            excluded: set[str] = set()  # cannot serve this request: planning, context, long retry-after
            retry_after: dict[str, float] = {}
            retry = 0
            while True:
                statuses = await cooldowns.check([d.id for d in step.deployments]) if cooldowns else {}
                usable = [d for d in step.deployments if d.id not in excluded
                          and statuses.get(d.id, _CLOSED).state is not State.OPEN]
                cooling += [s.retry_in for s in statuses.values() if s.state is State.OPEN]
                fresh = [d for d in usable if d.id not in tried]
                if not fresh and (retries_left <= 0 or not usable):
                    break
                candidates = fresh or usable
                if len(candidates) == 1 and not statuses:  # the common case: one deployment, none cooling
                    chosen: tuple[Deployment, bool] | None = (candidates[0], False)
                else:
                    chosen = await self._choose(strategy, candidates, statuses, cooldowns)
                if chosen is None:
                    break
                deployment, probing = chosen
                try:
                    planned = prepare(step, deployment)
                except GatewayError as exc:
                    excluded.add(deployment.id)
                    unplannable = unplannable or exc
                    continue
                if not fresh:
                    retries_left -= 1
                    retry += 1
                    delay = self._backoff(retry, retry_after.get(deployment.id))
                    log.debug("retrying %s in %.2fs (retry %d)", deployment.id, delay, retry)
                    await self._sleep(delay)
                    waited += delay
                tried.add(deployment.id)
                attempts += 1
                self.balancer.begin(deployment.id)
                began = time.perf_counter()
                try:
                    if self.tracing is None:
                        result = await call(deployment, planned)
                    else:
                        with self.tracing.attempt(route.name, deployment.id, attempts):
                            result = await call(deployment, planned)
                except GatewayError as exc:
                    waited += time.perf_counter() - began
                    self.balancer.end(deployment.id)
                    last = exc
                    if exc.kind in FALLBACK_KINDS:
                        excluded.add(deployment.id)
                        continue
                    if not exc.retryable:
                        raise
                    await self._failed(deployment, exc)
                    if exc.kind is ErrorKind.TIMEOUT:
                        excluded.add(deployment.id)  # waiting again would multiply the wait
                    elif exc.retry_after is not None:
                        if exc.retry_after > settings.max_retry_after:
                            excluded.add(deployment.id)
                        else:
                            retry_after[deployment.id] = exc.retry_after
                    self._attempt_log(logging.INFO, "attempt %d of %r on %s failed: %s", attempts, route.name,
                                      deployment.id, exc.message)
                    continue
                except BaseException:
                    self.balancer.end(deployment.id)
                    raise
                elapsed = time.perf_counter() - began
                waited += elapsed
                self.balancer.observe(deployment.id, elapsed)
                if probing and cooldowns is not None:
                    await cooldowns.record_success(deployment.id)
                    log.warning("deployment %s answered its probe; back in rotation", deployment.id)
                return _Outcome(result, planned, step, deployment, attempts, waited)
        if last is not None:
            raise last
        if unplannable is not None:
            raise unplannable
        if cooling:
            raise GatewayError(ErrorKind.UPSTREAM_UNAVAILABLE,
                               f"every deployment of model {route.name!r} is cooling down after repeated "
                               "failures", retry_after=min(cooling))
        raise GatewayError(ErrorKind.UPSTREAM_UNAVAILABLE, f"no deployment of model {route.name!r} is available")

    async def _choose(self, strategy: Strategy, candidates: list[Deployment], statuses: dict[str, Status],
                      cooldowns: CooldownStore | None) -> tuple[Deployment, bool] | None:
        """The best-priority candidate the strategy picks; a half-open one only with its probe."""
        pool = list(candidates)
        while pool:
            best = min(d.priority for d in pool)
            deployment = self.balancer.choose(strategy, [d for d in pool if d.priority == best])
            if statuses.get(deployment.id, _CLOSED).state is not State.HALF_OPEN:
                return deployment, False
            if cooldowns is not None and await cooldowns.try_probe(deployment.id):
                log.info("probing deployment %s after its cooldown", deployment.id)
                return deployment, True
            pool.remove(deployment)
        return None

    def _backoff(self, retry: int, retry_after: float | None) -> float:
        """Exponential with jitter (between half and all of the step), at least ``retry_after``."""
        settings = self.settings
        step: float = min(settings.backoff_max, settings.backoff * 2.0 ** (retry - 1))
        delay = step * (0.5 + self.balancer.rng.random() / 2)
        return max(delay, retry_after or 0.0)

    async def _failed(self, deployment: Deployment, error: GatewayError) -> None:
        if self.cooldowns is not None and await self.cooldowns.record_failure(deployment.id):
            log.warning("deployment %s keeps failing (%s); skipping it for %gs", deployment.id, error.message,
                        self.cooldowns.settings.period)
