"""A started answer and its one owner: the gateway's side of a stream.

:class:`GatewayChatStream` reads the backend's own event iterator directly (no wrapper in
between) and observes each event inline: the total deadline, time to first token, usage (counted,
or estimated when the upstream gave none), reasoning the client asked to leave out, and a failure
after the first event (an error event, counted toward the deployment's cooldown). Its end, however
it comes (the last event, an error, ``aclose``), closes the upstream call once and hands the
finished :class:`~dragoman.gateway.outcome.CallOutcome` on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

from dragoman.backends.base import total_exceeded
from dragoman.core.events import ChoiceEvent, Event, MessageEnd, PartDelta, PartEnd, PartStart, StreamError
from dragoman.core.types import Usage
from dragoman.errors import GatewayError
from dragoman.gateway.outcome import CallOutcome
from dragoman.gateway.router import Started


class GatewayChatStream:
    """The started answer (``core.service.ChatStream``): iterate it for its events, first one
    included, or take them by :meth:`batch` (what one upstream read delivered); ``aclose`` stops it
    early (the client left). A failure after the first event comes as one ``StreamError``, the
    last event."""

    __slots__ = ("_clock", "_closed", "_deadline", "_exclude", "_finished", "_first", "_generated_chars",
                 "_hidden", "_iterated", "_next", "_on_close", "_outcome", "_prompt_estimate", "_ready", "_shift",
                 "_started", "headers")

    def __init__(self, started: Started, *, headers: dict[str, str], outcome: CallOutcome, exclude_reasoning: bool,
                 prompt_estimate: Callable[[], int], on_close: Callable[[CallOutcome], Awaitable[None]]) -> None:
        self.headers = headers
        self._started = started
        self._first: Event | None = started.first
        self._next = started.events.__anext__
        # Events the backend already has in hand (``backends.http.HTTPEventStream.ready``), if it says.
        self._ready: Callable[[], list[Event]] | None = getattr(started.events, "ready", None)
        deadline = started.options.deadline
        self._deadline = deadline if deadline is not None else float("inf")
        self._clock = asyncio.get_running_loop().time
        self._outcome = outcome
        self._exclude = exclude_reasoning
        self._hidden: set[int] = set()  # indexes of reasoning parts left out
        self._shift = 0  # how many were left out so far
        self._prompt_estimate = prompt_estimate
        self._on_close = on_close
        self._iterated = False
        self._finished = False  # the answer's end came
        self._closed = False
        self._generated_chars = 0

    def __aiter__(self) -> GatewayChatStream:
        return self

    async def __anext__(self) -> Event:
        self._iterated = True
        while True:
            event = self._first
            if event is not None:
                self._first = None
            else:
                if self._closed:
                    raise StopAsyncIteration
                try:
                    # A clock read per read, no timer: the backends bound their own waits by the
                    # deadline, this ends one that keeps producing.
                    if self._clock() >= self._deadline:
                        raise total_exceeded(self._started.options.timeouts)
                    event = await self._next()
                except StopAsyncIteration:
                    await self._close()
                    raise
                except GatewayError as exc:
                    await self._started.failed(exc)
                    event = StreamError(exc)
                except BaseException:
                    self._cut()
                    await self._close()
                    raise
            shown = self._observe(event)
            if shown is not None:
                if type(shown) is StreamError:
                    await self._close()  # the last event: the call ends before the client reads it
                return shown

    async def batch(self) -> list[Event]:
        """The next event (waited for) and every one the upstream delivered with it, observed
        alike: what one read brought, to be written to the client at once. Empty at the end."""
        try:
            first = await self.__anext__()
        except StopAsyncIteration:
            return []
        batch = [first]
        ready = self._ready
        if ready is None or self._closed:
            return batch
        for event in ready():
            shown = self._observe(event)
            if shown is not None:
                batch.append(shown)
                if type(shown) is StreamError:
                    await self._close()
                    break
        return batch

    def _observe(self, event: Event) -> Event | None:
        """``event`` noted in the outcome, as the client gets it (None: left out)."""
        if type(event) is PartDelta:
            outcome = self._outcome
            if outcome.ttft is None:
                outcome.ttft = time.perf_counter() - outcome.ctx.started_at
            self._generated_chars += len(event.text)
        elif type(event) is MessageEnd:
            outcome = self._outcome
            self._finished = True
            outcome.finish_reason = event.finish_reason
            outcome.usage = self._usage(event.usage)
            return replace(event, usage=outcome.usage)
        elif type(event) is StreamError:
            outcome = self._outcome
            outcome.status, outcome.error_kind = event.error.status, event.error.kind.value
            return event
        elif type(event) is ChoiceEvent:  # another choice's (``n`` upstream): its text counts toward an estimate
            if type(event.event) is PartDelta:
                self._generated_chars += len(event.event.text)
            return event
        if self._exclude and isinstance(event, (PartStart, PartDelta, PartEnd)):
            return self._shown(event)
        return event

    def _shown(self, event: PartStart | PartDelta | PartEnd) -> Event | None:
        """``event`` as the client sees it with reasoning left out: None when hidden, else renumbered."""
        if isinstance(event, PartStart) and event.kind == "reasoning":
            self._hidden.add(event.index)
            self._shift += 1
            return None
        if event.index in self._hidden:
            return None
        return _reindex(event, event.index - self._shift) if self._shift else event

    def _usage(self, usage: Usage) -> Usage:
        if usage.prompt_tokens or usage.completion_tokens:
            return usage
        return Usage(prompt_tokens=self._prompt_estimate(),
                     completion_tokens=max(1, self._generated_chars // 4) if self._generated_chars else 0,
                     estimated=True)

    def _cut(self) -> None:
        """Ended before the answer did and without an error of its own: the client left."""
        if not self._finished and self._outcome.error_kind is None:
            self._outcome.cancel()

    async def aclose(self) -> None:
        """Stop early (client gone): closes the upstream call and records the outcome."""
        if self._closed:
            return
        if self._iterated:  # one never read is not counted as cancelled (nothing was asked of it)
            self._cut()
        await self._close()

    async def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        outcome = self._outcome
        if not outcome.usage.total_tokens:  # cut short: the upstream still read the prompt and wrote
            outcome.usage = self._usage(outcome.usage)  # what came so far (for usage and the budget)
        try:
            await self._started.aclose()
        finally:
            outcome.latency = time.perf_counter() - outcome.ctx.started_at
            await self._on_close(outcome)


def _reindex(event: PartStart | PartDelta | PartEnd, index: int) -> PartStart | PartDelta | PartEnd:
    if isinstance(event, PartStart):
        return PartStart(index, event.kind, event.tool_call_id, event.tool_name, event.redacted)
    if isinstance(event, PartDelta):
        return PartDelta(index, event.text)
    return PartEnd(index, event.signature)
