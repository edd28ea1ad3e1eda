"""Rebuild block-structured events from flat upstream deltas.

OpenAI-style upstreams (and llama.cpp, and Ollama) send a flat stream of text, reasoning and
tool-call fragments. :class:`PartTracker` turns it into sequential parts with contiguous
indexes, once, for every such backend.
"""

from __future__ import annotations

from dragoman.core.events import (
    Event,
    MessageEnd,
    MessageStart,
    PartDelta,
    PartEnd,
    PartKind,
    PartStart,
)
from dragoman.core.ids import tool_call_id
from dragoman.core.think import ThinkSplitter
from dragoman.core.types import FinishReason, Usage
from dragoman.errors import ErrorKind, GatewayError


class PartTracker:
    __slots__ = (
        "_closed_tools",
        "_current_tool",
        "_finish",
        "_has_tool_calls",
        "_kind",
        "_next_index",
        "_splitter",
        "_stop_sequence",
        "_usage",
        "started",
    )

    def __init__(self, *, split_think_tags: bool = False) -> None:
        self._next_index = 0
        self._kind: PartKind | None = None  # kind of the open part, if any
        self._current_tool: object = None  # upstream key of the open tool call
        self._closed_tools: set[object] = set()
        self._has_tool_calls = False
        self._finish: FinishReason | None = None
        self._stop_sequence: str | None = None
        self._usage: Usage | None = None
        self._splitter = ThinkSplitter() if split_think_tags else None
        self.started = False

    # ------------------------------------------------------------------ inputs

    def start(self, id: str, model: str, created: int, prompt_tokens: int | None = None,
              choices: int = 1) -> list[Event]:
        self.started = True
        return [MessageStart(id=id, model=model, created=created, prompt_tokens=prompt_tokens, choices=choices)]

    def text(self, delta: str) -> list[Event]:
        if not delta:
            return []
        if self._splitter is None:
            return self._delta("text", delta)
        events: list[Event] = []
        for channel, chunk in self._splitter.feed(delta):
            events += self._delta(channel, chunk)
        return events

    def reasoning(self, delta: str) -> list[Event]:
        return self._delta("reasoning", delta) if delta else []

    def tool_call(
        self, key: object, *, id: str | None = None, name: str | None = None, arguments: str = ""
    ) -> list[Event]:
        """A tool-call fragment; ``key`` identifies the call upstream (its index or id)."""
        events: list[Event] = []
        if self._kind != "tool_call" or self._current_tool != key:
            if key in self._closed_tools:
                raise GatewayError(ErrorKind.UPSTREAM_ERROR, "upstream interleaved tool-call fragments")
            events += self._close()
            events.append(
                PartStart(self._next_index, "tool_call", tool_call_id=id or tool_call_id(), tool_name=name or "")
            )
            self._kind = "tool_call"
            self._current_tool = key
            self._has_tool_calls = True
        if arguments:
            events.append(PartDelta(self._next_index, arguments))
        return events

    def finish(self, reason: FinishReason | None, stop_sequence: str | None = None) -> None:
        if reason is not None:
            self._finish = reason
            self._stop_sequence = stop_sequence

    def usage(self, usage: Usage) -> None:
        self._usage = usage

    @property
    def finished(self) -> bool:
        """Whether the upstream said how the answer ended (a finish reason was given)."""
        return self._finish is not None

    def end(self) -> list[Event]:
        """Close the stream (on the upstream's end, with or without an explicit finish)."""
        events: list[Event] = []
        if self._splitter is not None:
            for channel, chunk in self._splitter.flush():
                events += self._delta(channel, chunk)
        events += self._close()
        finish = self._finish or FinishReason.STOP
        if self._has_tool_calls and finish in (FinishReason.STOP, FinishReason.STOP_SEQUENCE):
            finish = FinishReason.TOOL_CALLS
        events.append(MessageEnd(finish, self._usage or Usage(), self._stop_sequence))
        return events

    # ----------------------------------------------------------------- helpers

    def _delta(self, kind: PartKind, text: str) -> list[Event]:
        events: list[Event] = []
        if self._kind != kind:
            events += self._close()
            events.append(PartStart(self._next_index, kind))
            self._kind = kind
        events.append(PartDelta(self._next_index, text))
        return events

    def _close(self) -> list[Event]:
        if self._kind is None:
            return []
        if self._kind == "tool_call":
            self._closed_tools.add(self._current_tool)
            self._current_tool = None
        end = PartEnd(self._next_index)
        self._kind = None
        self._next_index += 1
        return [end]
