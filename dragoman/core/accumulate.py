"""Non-streaming is accumulated streaming; streaming from a whole answer is a replay.

``accumulate`` is the only way any non-streaming response is built, so a streamed and an
unstreamed answer to the same request can never disagree.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from typing import Any

from dragoman.core.events import (
    ChoiceEvent,
    Event,
    Logprobs,
    MessageEnd,
    MessageStart,
    PartDelta,
    PartEnd,
    PartStart,
    StreamError,
)
from dragoman.core.types import (
    ChatResponse,
    FinishReason,
    Part,
    ReasoningPart,
    TextPart,
    ToolCallPart,
    Usage,
)
from dragoman.errors import ErrorKind, GatewayError


class Accumulator:
    """Folds events into a :class:`ChatResponse`, one event at a time."""

    __slots__ = ("_buffers", "_end", "_kinds", "_logprobs", "_parts", "_start")

    def __init__(self) -> None:
        self._start: MessageStart | None = None
        self._end: MessageEnd | None = None
        self._parts: list[Part] = []
        self._kinds: list[PartStart] = []
        self._buffers: list[list[str]] = []
        self._logprobs: list[dict[str, Any]] | None = None

    def add(self, event: Event) -> None:
        if isinstance(event, PartDelta):
            self._buffers[event.index].append(event.text)
        elif isinstance(event, PartStart):
            if event.index != len(self._kinds):
                raise GatewayError(ErrorKind.INTERNAL, f"part index {event.index} out of order")
            self._kinds.append(event)
            self._buffers.append([])
        elif isinstance(event, PartEnd):
            self._close(event)
        elif isinstance(event, MessageStart):
            self._start = event
        elif isinstance(event, MessageEnd):
            self._end = event
        elif isinstance(event, Logprobs):
            if self._logprobs is None:
                self._logprobs = []
            self._logprobs += event.entries
        elif isinstance(event, StreamError):
            raise event.error

    def _close(self, end: PartEnd) -> None:
        start = self._kinds[end.index]
        text = "".join(self._buffers[end.index])
        part: Part
        if start.kind == "text":
            part = TextPart(text)
        elif start.kind == "reasoning":
            part = ReasoningPart(text=text, signature=end.signature, redacted=start.redacted)
        else:
            part = ToolCallPart(id=start.tool_call_id or "", name=start.tool_name or "", arguments=text)
        self._parts.append(part)

    def result(self) -> ChatResponse:
        if self._start is None:
            raise GatewayError(ErrorKind.UPSTREAM_ERROR, "the upstream stream ended before it started")
        end = self._end or MessageEnd(FinishReason.STOP, Usage())
        return ChatResponse(
            id=self._start.id,
            model=self._start.model,
            created=self._start.created,
            parts=self._parts,
            finish_reason=end.finish_reason,
            usage=end.usage,
            stop_sequence=end.stop_sequence,
            context=end.context,
            logprobs=self._logprobs,
        )

    def results(self) -> list[ChatResponse]:
        """Every choice the stream carried, in choice order: here the one (see :class:`ChoicesAccumulator`)."""
        return [self.result()]


async def accumulate(events: AsyncIterable[Event]) -> ChatResponse:
    acc = Accumulator()
    async for event in events:
        acc.add(event)
    return acc.result()


class ChoicesAccumulator(Accumulator):
    """An accumulator for a stream that may carry several choices (``MessageStart.choices``, the
    others' events in ``ChoiceEvent``): :meth:`results` gives every choice, in choice order; the
    first carries the usage of all, the others' is zero (see ``core/events.py``). ``on_start`` is
    told how many choices the stream carries (the plain :class:`Accumulator` keeps choice 0 only)."""

    __slots__ = ("_on_start", "_others")

    def __init__(self, on_start: Callable[[MessageStart], object] | None = None) -> None:
        super().__init__()
        self._on_start = on_start
        self._others: dict[int, Accumulator] = {}

    def add(self, event: Event) -> None:
        if isinstance(event, ChoiceEvent):
            acc = self._others.get(event.choice)
            if acc is None:
                acc = self._others[event.choice] = Accumulator()
                if self._start is not None:
                    acc.add(self._start)
            acc.add(event.event)
            return
        if isinstance(event, MessageStart):
            for choice in range(1, event.choices):
                self._others[choice] = Accumulator()
                self._others[choice].add(event)
            if self._on_start is not None:
                self._on_start(event)
        super().add(event)

    def results(self) -> list[ChatResponse]:
        return [self.result(), *(self._others[c].result() for c in sorted(self._others))]


def replay_events(response: ChatResponse) -> Iterator[Event]:
    """The events that ``accumulate`` would fold into ``response``."""
    yield MessageStart(id=response.id, model=response.model, created=response.created,
                       prompt_tokens=response.usage.prompt_tokens)
    for index, part in enumerate(response.parts):
        if isinstance(part, TextPart):
            yield PartStart(index, "text")
            if part.text:
                yield PartDelta(index, part.text)
            yield PartEnd(index)
        elif isinstance(part, ReasoningPart):
            yield PartStart(index, "reasoning", redacted=part.redacted)
            if part.text:
                yield PartDelta(index, part.text)
            yield PartEnd(index, signature=part.signature)
        elif isinstance(part, ToolCallPart):
            yield PartStart(index, "tool_call", tool_call_id=part.id, tool_name=part.name)
            if part.arguments:
                yield PartDelta(index, part.arguments)
            yield PartEnd(index)
    if response.logprobs is not None:
        yield Logprobs(response.logprobs)
    yield MessageEnd(response.finish_reason, response.usage, response.stop_sequence, response.context)


async def replay(response: ChatResponse) -> AsyncIterator[Event]:
    for event in replay_events(response):
        yield event
