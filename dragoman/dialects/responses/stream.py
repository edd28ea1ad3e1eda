"""Canonical events -> the Responses API's SSE event sequence, with ``sequence_number``.

One output item per canonical part: text is a ``message`` (its ``output_text`` part opened before
any delta, as the SDK's accumulator requires), reasoning a ``reasoning`` item (summary or
reasoning text), a tool call a ``function_call`` or ``custom_tool_call``. Each item is added,
filled and done before the next opens. The stream ends with ``response.completed``,
``response.incomplete`` or ``response.failed``, each carrying the whole response; a failure
after the first byte sends the spec's ``error`` event just before ``response.failed``. A custom tool's
input is sent whole when its part ends: the model writes it as JSON arguments, which are not the
raw text the client expects in deltas.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from dragoman.core.accumulate import Accumulator, replay_events
from dragoman.core.events import Event, MessageEnd, MessageStart, PartDelta, PartEnd, PartStart, StreamError
from dragoman.core.types import ChatResponse
from dragoman.dialects.responses import output as out
from dragoman.dialects.responses.convert import ResponsesRequest, custom_input

Completed = Callable[[dict[str, Any], ChatResponse], None]


@dataclass(slots=True)
class _Item:
    kind: str
    index: int  # output_index
    id: str
    call_id: str = ""
    name: str = ""
    redacted: str | None = None
    opened: bool = False  # a reasoning item's part has been announced
    text: list[str] = field(default_factory=list)


class ResponseEncoder:
    """One per response. ``final`` is the whole response object once the stream has ended;
    ``on_complete`` gets it (with the canonical answer) when the answer completed."""

    def __init__(self, req: ResponsesRequest, response_id: str, created_at: int,
                 on_complete: Completed | None = None, *, frames: bool = True) -> None:
        self.req = req
        self.frames = frames
        self.id = response_id
        self.created_at = created_at
        self.on_complete = on_complete
        self.output: list[dict[str, Any]] = []
        self.final: dict[str, Any] | None = None
        self._seq = 0
        self._items: dict[int, _Item] = {}
        self._accumulator = Accumulator() if on_complete is not None else None
        self._held = b""  # a kept answer's terminal event, sent by ``tail`` once the answer is stored

    def encode(self, event: Event) -> bytes:
        if self._accumulator is not None and not isinstance(event, StreamError):
            self._accumulator.add(event)
        if isinstance(event, PartDelta):
            return self._delta(event)
        if isinstance(event, PartStart):
            return self._start(event)
        if isinstance(event, PartEnd):
            return self._end(event)
        if isinstance(event, MessageStart):
            if not self.frames:
                return b""
            snapshot = self._response("in_progress")
            return (self._frame("response.created", {"response": snapshot})
                    + self._frame("response.in_progress", {"response": snapshot}))
        if isinstance(event, MessageEnd):
            status, incomplete = out.status_of(event.finish_reason)
            self.final = self._response(status, usage=event.usage, incomplete=incomplete)
            terminal = self._frame(f"response.{status}", {"response": self.final})
            if self.on_complete is not None and self._accumulator is not None:
                self.on_complete(self.final, self._accumulator.result())
                self._held = terminal  # after the write the handler awaits (``Generation.settle``)
                return b""
            return terminal
        if isinstance(event, StreamError):
            error = out.failed_error(event.error)
            self.final = self._response("failed", error=error)
            # The spec's ``error`` event, then the terminal ``response.failed`` that clients such as
            # Codex and the SDK's accumulator wait for.
            return (self._frame("error", {**error, "param": event.error.param})
                    + self._frame("response.failed", {"response": self.final}))
        return b""

    def tail(self) -> bytes:
        return self._held

    # ------------------------------------------------------------------------------- parts

    def _start(self, event: PartStart) -> bytes:
        index = len(self.output)
        req = self.req
        if event.kind == "text":
            item = _Item("text", index, out.item_id("msg_"))
            added = out.message_item(item.id, None, "in_progress")
        elif event.kind == "reasoning":
            item = _Item("reasoning", index, out.item_id("rs_"), redacted=event.redacted)
            added = out.reasoning_item(req, item.id, None, "in_progress")
        else:
            name = event.tool_name or ""
            item = _Item("tool", index, out.item_id(out.call_prefix(req, name)), call_id=event.tool_call_id or "",
                         name=name)
            added = out.call_item(req, item.id, item.call_id, name, "", "in_progress")
        self._items[event.index] = item
        self.output.append(added)
        frames = self._frame("response.output_item.added", {"output_index": index, "item": added})
        if item.kind == "text":
            frames += self._frame("response.content_part.added", {
                "item_id": item.id, "output_index": index, "content_index": 0, "part": out.output_text("")})
        return frames

    def _delta(self, event: PartDelta) -> bytes:
        item = self._items[event.index]
        item.text.append(event.text)
        where = {"item_id": item.id, "output_index": item.index}
        if item.kind == "text":
            return self._frame("response.output_text.delta", {**where, "content_index": 0, "delta": event.text,
                                                              "logprobs": []})
        if item.kind == "reasoning":
            frames = b""
            if not item.opened:
                item.opened = True
                frames = self._reasoning_part("added", item, "")
            if self.req.summary:
                return frames + self._frame("response.reasoning_summary_text.delta",
                                            {**where, "summary_index": 0, "delta": event.text})
            return frames + self._frame("response.reasoning_text.delta",
                                        {**where, "content_index": 0, "delta": event.text})
        if self.req.names.is_custom(item.name):
            return b""  # sent whole at the end (see the module's docstring)
        return self._frame("response.function_call_arguments.delta", {**where, "delta": event.text})

    def _end(self, event: PartEnd) -> bytes:
        item = self._items.pop(event.index)
        text = "".join(item.text)
        where = {"item_id": item.id, "output_index": item.index}
        req = self.req
        if item.kind == "text":
            done = out.message_item(item.id, text, "completed")
            frames = (self._frame("response.output_text.done", {**where, "content_index": 0, "text": text,
                                                                 "logprobs": []})
                      + self._frame("response.content_part.done", {**where, "content_index": 0,
                                                                   "part": out.output_text(text)}))
        elif item.kind == "reasoning":
            frames = b""
            if item.opened:
                kind = "reasoning_summary_text" if req.summary else "reasoning_text"
                position = "summary_index" if req.summary else "content_index"
                frames = (self._frame(f"response.{kind}.done", {**where, position: 0, "text": text})
                          + self._reasoning_part("done", item, text))
            encrypted = item.redacted if item.redacted is not None else event.signature
            done = out.reasoning_item(req, item.id, text if item.opened else None, "completed", encrypted)
        else:
            done = out.call_item(req, item.id, item.call_id, item.name, text, "completed")
            if req.names.is_custom(item.name):
                raw = custom_input(text)
                frames = self._frame("response.custom_tool_call_input.delta", {**where, "delta": raw}) if raw else b""
                frames += self._frame("response.custom_tool_call_input.done", {**where, "input": raw})
            else:
                frames = self._frame("response.function_call_arguments.done",
                                     {**where, "name": done["name"], "arguments": text})
        self.output[item.index] = done
        return frames + self._frame("response.output_item.done", {"output_index": item.index, "item": done})

    def _reasoning_part(self, state: str, item: _Item, text: str) -> bytes:
        where = {"item_id": item.id, "output_index": item.index}
        if self.req.summary:
            return self._frame(f"response.reasoning_summary_part.{state}",
                               {**where, "summary_index": 0, "part": {"type": "summary_text", "text": text}})
        return self._frame(f"response.content_part.{state}",
                           {**where, "content_index": 0, "part": {"type": "reasoning_text", "text": text}})

    # ------------------------------------------------------------------------------ frames

    def _response(self, status: str, **kwargs: Any) -> dict[str, Any]:
        return out.response_object(self.req, self.id, self.created_at, status=status, output=list(self.output),
                                   **kwargs)

    def _frame(self, kind: str, data: dict[str, Any]) -> bytes:
        if not self.frames:
            return b""  # a whole answer: only ``final`` is wanted
        data = {"type": kind, **data, "sequence_number": self._seq}
        self._seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def whole_response(req: ResponsesRequest, response_id: str, created_at: int, response: ChatResponse) -> dict[str, Any]:
    """A whole answer's response object, built by the stream's own encoder from the accumulated
    answer (so whole and streamed answers cannot drift apart)."""
    encoder = ResponseEncoder(req, response_id, created_at, frames=False)
    for event in replay_events(response):
        encoder.encode(event)
    assert encoder.final is not None  # replay_events ends with MessageEnd
    return encoder.final
