"""Canonical events -> Anthropic's named SSE events, almost one to one.

Canonical parts are already Anthropic's content blocks (sequential, indexes contiguous from
0), so each event maps to one frame: ``message_start`` (then a ``ping``),
``content_block_start`` with the empty placeholder the SDK accumulates into, deltas,
``signature_delta`` just before a thinking block's stop, ``message_delta`` with the
cumulative usage, ``message_stop``. Tool input fragments go out as they arrive while they
extend a valid JSON object (:class:`dragoman.core.jsonprefix.ObjectPrefix`), so a model's
bad JSON ends as the same object the non-streaming answer holds instead of breaking the
client's parser. A ``ping`` also goes out whenever the next event takes longer than the
ping interval, so proxies and clients see a live connection while a model thinks.
"""

from __future__ import annotations

from typing import Any

import orjson

from dragoman.core.events import Event, MessageEnd, MessageStart, PartDelta, PartEnd, PartStart, StreamError
from dragoman.core.ids import now, random_id
from dragoman.core.jsonprefix import ObjectPrefix
from dragoman.dialects.anthropic.convert import error_body, message_id, tool_use_id, usage_body
from dragoman.protocols.anthropic import STOP_REASONS

PING = b'event: ping\ndata: {"type":"ping"}\n\n'
PING_INTERVAL = 10.0
_DELTA_HEAD = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":'


def frame(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class EventEncoder:
    """One per response; ``model`` is the name the client asked for."""

    def __init__(self, model: str) -> None:
        self.model = model
        self._started = False
        self._kinds: dict[int, str] = {}
        self._redacted: set[int] = set()
        self._tools: dict[int, ObjectPrefix] = {}

    def encode(self, event: Event) -> bytes:
        out = b""
        if not self._started and not isinstance(event, (MessageStart, StreamError)):
            out = self._message_start(MessageStart(random_id("msg_"), self.model, now()))
        if isinstance(event, PartDelta):
            return out + self._delta(event)
        if isinstance(event, PartStart):
            return out + self._start(event)
        if isinstance(event, PartEnd):
            return out + self._end(event)
        if isinstance(event, MessageStart):
            return out + self._message_start(event)
        if isinstance(event, MessageEnd):
            delta = {"stop_reason": STOP_REASONS[event.finish_reason], "stop_sequence": event.stop_sequence}
            return out + frame("message_delta", {"type": "message_delta", "delta": delta,
                                                 "usage": usage_body(event.usage)}) \
                + frame("message_stop", {"type": "message_stop"})
        if isinstance(event, StreamError):
            return out + frame("error", error_body(event.error))
        return out

    def tail(self) -> bytes:
        return b""

    def _message_start(self, event: MessageStart) -> bytes:
        self._started = True
        usage = {"input_tokens": event.prompt_tokens or 0, "output_tokens": 1,
                 "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
        message: dict[str, Any] = {"id": message_id(event.id), "type": "message", "role": "assistant",
                                   "model": self.model, "content": [], "stop_reason": None, "stop_sequence": None,
                                   "usage": usage}
        return frame("message_start", {"type": "message_start", "message": message}) + PING

    def _start(self, event: PartStart) -> bytes:
        self._kinds[event.index] = event.kind
        block: dict[str, Any]
        if event.kind == "text":
            block = {"type": "text", "text": ""}
        elif event.kind == "reasoning":
            if event.redacted is not None:
                self._redacted.add(event.index)
                block = {"type": "redacted_thinking", "data": event.redacted}
            else:
                block = {"type": "thinking", "thinking": "", "signature": ""}
        else:
            self._tools[event.index] = ObjectPrefix()
            block = {"type": "tool_use", "id": tool_use_id(event.tool_call_id or ""), "name": event.tool_name or "",
                     "input": {}}
        return frame("content_block_start", {"type": "content_block_start", "index": event.index,
                                             "content_block": block})

    def _delta(self, event: PartDelta) -> bytes:
        kind = self._kinds.get(event.index)
        if kind == "text":  # the hot path: a byte template, not a dict to serialise
            return (_DELTA_HEAD + str(event.index).encode() + b',"delta":{"type":"text_delta","text":'
                    + orjson.dumps(event.text) + b"}}\n\n")
        if kind == "reasoning":
            if event.index in self._redacted:
                return b""
            return (_DELTA_HEAD + str(event.index).encode() + b',"delta":{"type":"thinking_delta","thinking":'
                    + orjson.dumps(event.text) + b"}}\n\n")
        scanner = self._tools.get(event.index)
        if scanner is None:
            return b""
        fragment = scanner.feed(event.text)
        return self._block_delta(event.index, {"type": "input_json_delta", "partial_json": fragment}) \
            if fragment else b""

    def _end(self, event: PartEnd) -> bytes:
        out = b""
        kind = self._kinds.get(event.index)
        if kind == "reasoning" and event.signature is not None and event.index not in self._redacted:
            out = self._block_delta(event.index, {"type": "signature_delta", "signature": event.signature})
        elif kind == "tool_call":
            scanner = self._tools.pop(event.index)
            tail = scanner.close()
            if tail:
                out = self._block_delta(event.index, {"type": "input_json_delta", "partial_json": tail})
        return out + frame("content_block_stop", {"type": "content_block_stop", "index": event.index})

    @staticmethod
    def _block_delta(index: int, delta: dict[str, Any]) -> bytes:
        return frame("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
