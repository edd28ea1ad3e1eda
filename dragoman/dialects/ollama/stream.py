"""Canonical events -> Ollama NDJSON lines (and the same timings for whole answers).

One complete JSON object per line and per write. Text and thinking deltas go out as they
come; a tool call is buffered until its part ends and sent whole with object arguments.
The final line carries ``done_reason`` and the nanosecond metrics Ollama clients show:
``load_duration`` is the time until the backend started answering, ``prompt_eval_duration``
from there to the first token, ``eval_duration`` from the first token to the end.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from dragoman.core.events import Event, MessageEnd, MessageStart, PartDelta, PartEnd, PartStart, StreamError
from dragoman.core.types import ChatResponse, ToolCallPart, Usage
from dragoman.dialects.ollama.convert import error_body, timestamp, tool_call_body
from dragoman.protocols.ollama import DONE_REASONS


class Timing:
    """Marks when the answer started and produced its first token (``perf_counter`` nanoseconds)."""

    __slots__ = ("first_token", "start", "started_at")

    def __init__(self, started_at: float) -> None:
        self.started_at = int(started_at * 1_000_000_000)  # the request's arrival, perf_counter seconds
        self.start: int | None = None
        self.first_token: int | None = None

    def observe(self, event: Event) -> None:
        if isinstance(event, PartDelta):
            if self.first_token is None:
                self.first_token = time.perf_counter_ns()
        elif isinstance(event, MessageStart) and self.start is None:
            self.start = time.perf_counter_ns()

    def metrics(self, usage: Usage) -> dict[str, int]:
        end = time.perf_counter_ns()
        start = self.start if self.start is not None else end
        first = self.first_token if self.first_token is not None else end
        return {
            "total_duration": max(1, end - self.started_at),
            "load_duration": max(0, start - self.started_at),
            "prompt_eval_count": usage.prompt_tokens,
            "prompt_eval_duration": max(1, first - start),
            "eval_count": usage.completion_tokens,
            "eval_duration": max(1, end - first),
        }


def final_body(model: str, response: ChatResponse, timing: Timing, *, generate: bool,
               context: bool = False) -> dict[str, Any]:
    """The whole (non-streamed) answer as one object; with ``context``, the token ids to continue from."""
    body: dict[str, Any] = {"model": model, "created_at": timestamp()}
    reasoning = response.reasoning_text
    if generate:
        body["response"] = response.text
        if reasoning:
            body["thinking"] = reasoning
    else:
        message: dict[str, Any] = {"role": "assistant", "content": response.text}
        if reasoning:
            message["thinking"] = reasoning
        calls = response.tool_calls
        if calls:
            message["tool_calls"] = [tool_call_body(call, i) for i, call in enumerate(calls)]
        body["message"] = message
    body["done_reason"] = DONE_REASONS[response.finish_reason]
    body["done"] = True
    if context:
        body["context"] = response.context or []
    body.update(timing.metrics(response.usage))
    return body


class LineEncoder:
    """One per response: events in, NDJSON lines out (``b""`` when an event writes nothing).
    With ``context`` the final line carries the token ids to continue from (``/api/generate``)."""

    def __init__(self, model: str, timing: Timing, *, generate: bool, context: bool = False) -> None:
        self.timing = timing
        self.generate = generate
        self.context = context
        self._head = b'{"model":' + orjson.dumps(model) + b',"created_at":"'
        self._kinds: dict[int, str] = {}
        self._tool: dict[int, tuple[str, str, list[str]]] = {}
        self._tool_count = 0
        self._second = -1
        self._second_text = ""

    def _stamp(self) -> bytes:
        ns = time.time_ns()
        second, fraction = divmod(ns, 1_000_000_000)
        if second != self._second:
            self._second = second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return self._head + f'{self._second_text}.{fraction:09d}Z"'.encode()

    def _line(self, body: bytes) -> bytes:
        return self._stamp() + body + b"\n"

    def encode(self, event: Event) -> bytes:
        self.timing.observe(event)
        if isinstance(event, PartDelta):
            kind = self._kinds[event.index]
            if kind == "tool_call":
                self._tool[event.index][2].append(event.text)
                return b""
            text = orjson.dumps(event.text)
            if self.generate:
                body = b',"response":' + text if kind == "text" else b',"response":"","thinking":' + text
            elif kind == "text":
                body = b',"message":{"role":"assistant","content":' + text + b"}"
            else:
                body = b',"message":{"role":"assistant","content":"","thinking":' + text + b"}"
            return self._line(body + b',"done":false}')
        if isinstance(event, PartStart):
            self._kinds[event.index] = event.kind
            if event.kind == "tool_call":
                self._tool[event.index] = (event.tool_call_id or "", event.tool_name or "", [])
            return b""
        if isinstance(event, PartEnd):
            call = self._tool.pop(event.index, None)
            if call is None or self.generate:
                return b""
            part = ToolCallPart(id=call[0], name=call[1], arguments="".join(call[2]))
            message = {"role": "assistant", "content": "", "tool_calls": [tool_call_body(part, self._tool_count)]}
            self._tool_count += 1
            return self._line(b',"message":' + orjson.dumps(message) + b',"done":false}')
        if isinstance(event, MessageEnd):
            empty = b',"response":""' if self.generate else b',"message":{"role":"assistant","content":""}'
            tail: dict[str, Any] = {"done_reason": DONE_REASONS[event.finish_reason], "done": True}
            if self.context:
                tail["context"] = event.context or []
            tail.update(self.timing.metrics(event.usage))
            return self._line(empty + b"," + orjson.dumps(tail)[1:])
        if isinstance(event, StreamError):
            return orjson.dumps(error_body(event.error)) + b"\n"
        return b""

    def tail(self) -> bytes:
        return b""
