"""A backend from one generator: the common case of a model of your own.

Subclass :class:`ModelBackend`, declare what the model can do as class attributes, and write
``generate``: it gets the canonical request and yields the answer as it comes, as text (``str``)
and, optionally, :class:`Thinking`, :class:`ToolCall` and one :class:`Usage`. ``generate`` may
be an async generator, or a plain (blocking) one, which is then stepped in a worker thread so
the model never stalls the event loop. The gateway does the rest: the three client dialects,
streaming and whole answers, keys, limits, usage figures and the admin UI.

The base class keeps the request's ``stop`` sequences (text is cut at the first one, and a tail
that may start one is held back) and ``max_tokens``, counting each text or thinking chunk as a
token. Without a yielded ``Usage``, usage is that count and an estimate of the prompt, marked
estimated. A client that goes away closes the generator at its next ``yield``.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
from abc import abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import orjson
from pydantic import BaseModel

from dragoman.backends.base import Backend, BackendDeps, CallOptions, within_deadline
from dragoman.core.events import Event, MessageStart
from dragoman.core.ids import completion_id, now
from dragoman.core.models import Capabilities, ModelDetails, ModelInfo
from dragoman.core.parts import PartTracker
from dragoman.core.stops import StopMatcher
from dragoman.core.tokens import estimate_prompt_tokens
from dragoman.core.types import ChatRequest, FinishReason, Role, ToolResultPart, Usage
from dragoman.errors import ErrorKind, GatewayError

__all__ = ["ChatRequest", "ModelBackend", "Output", "Thinking", "ToolCall", "Usage", "last_text", "tool_results"]

log = logging.getLogger("dragoman.model")


@dataclass(slots=True, frozen=True)
class Thinking:
    """Reasoning text, shown as reasoning in every dialect (and hidden with ``exclude_reasoning``)."""

    text: str


@dataclass(slots=True, frozen=True)
class ToolCall:
    """A call of one of ``request.tools``: ``arguments`` as an object, or as JSON text."""

    name: str
    arguments: Mapping[str, Any] | str = field(default_factory=dict)
    id: str | None = None  # generated when None


Output = str | Thinking | ToolCall | Usage


class ModelBackend(Backend):
    """One class, one generator: see the module docstring. ``settings`` holds the instance of the
    class's ``Settings`` model (declare ``settings: MySettings`` on the class for its type)."""

    models: ClassVar[Sequence[str]] = ()  # the model names served; none: one named after the backend
    tools: ClassVar[bool] = False
    vision: ClassVar[bool] = False  # images arrive as ImagePart in the request's messages
    reasoning: ClassVar[bool] = False
    context_length: ClassVar[int | None] = None
    threads: ClassVar[int] = 4  # worker threads for a blocking ``generate``: steps that run at once

    def __init__(self, name: str, settings: BaseModel, deps: BackendDeps) -> None:
        super().__init__(name, settings, deps)
        self.settings = settings
        self.deps = deps
        self._pool: ThreadPoolExecutor | None = None

    @abstractmethod
    def generate(self, request: ChatRequest) -> AsyncIterator[Output] | Iterator[Output]:
        """The answer to ``request`` (``request.model`` is one of this backend's model names),
        yielded as it comes. Raise ``GatewayError`` for an answer the client should get as an
        error (``ErrorKind.INVALID_REQUEST``: a 400 in the client's dialect); any other exception
        is logged and answered as an internal error."""

    async def list_models(self) -> list[ModelInfo]:
        caps = Capabilities(vision=self.vision, tools=self.tools, reasoning=self.reasoning, json_schema=False)
        details = ModelDetails(family=type(self).__name__, format="python")
        return [ModelInfo(name=model, capabilities=caps, context_length=self.context_length, details=details)
                for model in self.models or (self.name,)]

    async def aclose(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    async def stream(self, request: ChatRequest, model: str, options: CallOptions) -> AsyncIterator[Event]:
        answer = _Answer(request)
        try:
            produced = self._outputs(replace(request, model=model))
        except GatewayError:
            raise
        except Exception as exc:
            raise self._failed(exc, model) from exc
        async with aclosing(produced) as outputs:
            item = await self._next(outputs, options, model)  # first: a failure here is an error status
            yield MessageStart(id=completion_id(), model=model, created=now())
            while item is not None:
                for event in answer.add(item):
                    yield event
                if answer.ended:
                    break
                item = await self._next(outputs, options, model)
        for event in answer.end():
            yield event

    def _outputs(self, request: ChatRequest) -> AsyncGenerator[Output, None]:
        produced = self.generate(request)
        if isinstance(produced, AsyncGenerator):
            return produced
        if isinstance(produced, AsyncIterator):
            return _each(produced)
        if isinstance(produced, Iterator):
            return _in_thread(produced, self._threads())
        raise GatewayError(ErrorKind.INTERNAL, f"{type(self).__name__}.generate returned a "
                           f"{builtins.type(produced).__name__}, not a generator")

    async def _next(self, outputs: AsyncIterator[Output], options: CallOptions, model: str) -> Output | None:
        """The next output, None at the end; the wait ends by the request's deadline."""
        try:
            return await within_deadline(anext(outputs), options)
        except StopAsyncIteration:
            return None
        except GatewayError:
            raise
        except Exception as exc:
            raise self._failed(exc, model) from exc

    def _failed(self, exc: Exception, model: str) -> GatewayError:
        """A bug in the model's code: logged with its traceback; the client gets a 500 without details."""
        log.error("model %s of backend %s failed", model, self.name, exc_info=exc)
        return GatewayError(ErrorKind.INTERNAL, f"model {model!r} of backend {self.name!r} failed "
                            f"({type(exc).__name__}); see the server log")

    def _threads(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix=f"model-{self.name}")
        return self._pool


def last_text(request: ChatRequest) -> str:
    """What the model answers: a completion's raw prompt, else the text of the last message
    (of a tool result, the result's text)."""
    if request.prompt is not None:
        return request.prompt
    if not request.messages:
        return ""
    last = request.messages[-1]
    results = [p.text for p in last.parts if isinstance(p, ToolResultPart)]
    return "\n".join(results) if results or last.role is Role.TOOL else last.text


def tool_results(request: ChatRequest) -> list[ToolResultPart]:
    """Every tool result in the conversation, oldest first."""
    return [p for m in request.messages for p in m.parts if isinstance(p, ToolResultPart)]


class _Answer:
    """Outputs -> canonical events, keeping the request's stop sequences and ``max_tokens``."""

    __slots__ = ("_calls", "_chunks", "_finish", "_limit", "_request", "_stops", "_thinking", "_tracker", "_usage",
                 "ended")

    def __init__(self, request: ChatRequest) -> None:
        self._request = request
        self._tracker = PartTracker()
        self._stops = StopMatcher([s for s in request.sampling.stop if s])
        self._limit = request.sampling.max_tokens
        self._chunks = 0
        self._thinking = 0
        self._calls = 0
        self._usage: Usage | None = None
        self._finish = FinishReason.STOP
        self.ended = False

    def add(self, item: Output) -> list[Event]:
        tracker = self._tracker
        if isinstance(item, str):
            text, matched = self._stops.feed(item)
            events = tracker.text(text)
            if matched is not None:
                tracker.finish(FinishReason.STOP_SEQUENCE, matched)
                self.ended = True
            else:
                self._count()
            return events
        if isinstance(item, Thinking):
            self._thinking += 1
            events = tracker.reasoning(item.text)
            self._count()
            return events
        if isinstance(item, ToolCall):
            self._calls += 1
            return tracker.tool_call(self._calls, id=item.id, name=item.name, arguments=_arguments(item))
        if isinstance(item, Usage):
            self._usage = item
            return []
        raise GatewayError(ErrorKind.INTERNAL, f"a model yielded a {builtins.type(item).__name__}; "
                           "it may yield str, Thinking, ToolCall or Usage")

    def _count(self) -> None:
        self._chunks += 1
        if self._limit is not None and self._chunks >= self._limit:
            self._tracker.finish(FinishReason.LENGTH)
            self.ended = True

    def end(self) -> list[Event]:
        tracker = self._tracker
        events = tracker.text(self._stops.flush())  # empty after a match
        usage = self._usage or Usage(prompt_tokens=estimate_prompt_tokens(self._request),
                                     completion_tokens=self._chunks + self._calls,
                                     reasoning_tokens=self._thinking, estimated=True)
        tracker.usage(usage)
        return events + tracker.end()


def _arguments(call: ToolCall) -> str:
    if not isinstance(call.arguments, str):
        return orjson.dumps(dict(call.arguments)).decode()
    try:
        orjson.loads(call.arguments)
    except orjson.JSONDecodeError:
        raise GatewayError(ErrorKind.INTERNAL, f"the arguments of a call of {call.name!r} are not JSON") from None
    return call.arguments


async def _each(items: AsyncIterator[Output]) -> AsyncGenerator[Output, None]:
    """An async iterator that is not a generator, as one (one way to close them all)."""
    async for item in items:
        yield item


async def _in_thread(items: Iterator[Output], pool: ThreadPoolExecutor) -> AsyncGenerator[Output, None]:
    """``items`` stepped in ``pool``, one item per hop. Closing this closes them in the pool too,
    after a step that is still running there (a thread cannot be interrupted)."""
    step: Future[Output | None] | None = None
    try:
        while True:
            step = pool.submit(_step, items)
            item = await asyncio.wrap_future(step)
            if item is None:
                return
            yield item
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            if step is not None and not step.done():
                step.add_done_callback(lambda _: close())  # runs in the worker thread, once the step returns
            else:
                try:
                    pool.submit(close)
                except RuntimeError:  # the backend is shutting down: close here
                    close()


def _step(items: Iterator[Output]) -> Output | None:
    return next(items, None)
