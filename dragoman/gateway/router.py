"""Choosing a target and getting a first event out of it.

Targets are tried in order. A failure the request did not cause (connect error, 429, 5xx,
timeout, or a context window too small for this target) moves on to the next target, only
ever before the first event has been produced, so a client never sees half an answer twice.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from dragoman.backends.base import CallOptions
from dragoman.core.events import Event
from dragoman.core.types import ChatRequest, EmbeddingRequest, EmbeddingResponse
from dragoman.errors import ErrorKind, GatewayError
from dragoman.gateway.registry import Target

FALLBACK_KINDS = frozenset({ErrorKind.CONTEXT_TOO_LONG})


@dataclass(slots=True)
class Started:
    target: Target
    request: ChatRequest  # as planned for this target
    first: Event
    events: AsyncIterator[Event]
    attempts: int
    overhead: float  # seconds the gateway spent before handing the request to the backend


class Router:
    def should_try_next(self, error: GatewayError) -> bool:
        return error.retryable or error.kind in FALLBACK_KINDS

    async def start(self, planned: Sequence[tuple[Target, ChatRequest]],
                    options_for: Callable[[Target], CallOptions], *, started_at: float) -> Started:
        last: GatewayError | None = None
        overhead: float | None = None
        for attempt, (target, request) in enumerate(planned, start=1):
            if overhead is None:
                overhead = time.perf_counter() - started_at
            events = target.backend.stream(request, target.model, options_for(target))
            try:
                first = await anext(events)
            except StopAsyncIteration:
                last = GatewayError(ErrorKind.UPSTREAM_ERROR, f"backend {target.backend.name!r} sent nothing")
                continue
            except GatewayError as exc:
                await events.aclose()  # type: ignore[attr-defined]
                last = exc
                if self.should_try_next(exc) and attempt < len(planned):
                    continue
                raise
            except BaseException:
                await events.aclose()  # type: ignore[attr-defined]
                raise
            return Started(target, request, first, events, attempt, overhead)
        assert last is not None
        raise last

    async def embed(self, targets: Sequence[Target], request: EmbeddingRequest,
                    options: CallOptions) -> tuple[EmbeddingResponse, Target, int]:
        last: GatewayError | None = None
        for attempt, target in enumerate(targets, start=1):
            try:
                return await target.backend.embed(request, target.model, options), target, attempt
            except GatewayError as exc:
                last = exc
                if self.should_try_next(exc) and attempt < len(targets):
                    continue
                raise
        assert last is not None
        raise last
