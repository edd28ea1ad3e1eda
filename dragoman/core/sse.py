"""Incremental decoders for upstream streams (SSE and NDJSON), across chunk boundaries.

Pure functions of the bytes fed in: no I/O, so they are unit-tested on split fixtures.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class ServerSentEvent:
    event: str | None
    data: str


class LineSplitter:
    """Splits a byte stream into lines on ``\\n``, ``\\r\\n`` or ``\\r``, whatever the chunking."""

    __slots__ = ("_buffer", "_pending_cr")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._pending_cr = False

    def feed(self, chunk: bytes) -> list[bytes]:
        if self._pending_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._pending_cr = False
        self._buffer += chunk
        if b"\r" in self._buffer:
            self._pending_cr = self._buffer.endswith(b"\r")
            text = bytes(self._buffer).replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        else:
            text = bytes(self._buffer)
        *lines, rest = text.split(b"\n")
        self._buffer = bytearray(rest)
        return lines

    def flush(self) -> list[bytes]:
        rest = bytes(self._buffer)
        self._buffer.clear()
        return [rest] if rest else []


class SSEDecoder:
    """The WHATWG event-stream parser: ``event:``, ``data:`` (multi-line), comments, blank-line dispatch."""

    __slots__ = ("_data", "_event", "_lines")

    def __init__(self) -> None:
        self._lines = LineSplitter()
        self._event: str | None = None
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        return self._process(self._lines.feed(chunk))

    def flush(self) -> list[ServerSentEvent]:
        """At EOF: a final event without its blank line still counts."""
        events = self._process(self._lines.flush())
        events += self._process([b""])
        return events

    def _process(self, lines: list[bytes]) -> list[ServerSentEvent]:
        events: list[ServerSentEvent] = []
        for raw in lines:
            if not raw:
                if self._data or self._event is not None:
                    events.append(ServerSentEvent(self._event, "\n".join(self._data)))
                self._event = None
                self._data = []
                continue
            line = raw.decode("utf-8", errors="replace")
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            if value.startswith(" "):
                value = value[1:]
            if name == "data":
                self._data.append(value)
            elif name == "event":
                self._event = value
        return events


class NDJSONDecoder:
    """Yields complete, non-blank lines of a newline-delimited JSON stream."""

    __slots__ = ("_lines",)

    def __init__(self) -> None:
        self._lines = LineSplitter()

    def feed(self, chunk: bytes) -> list[bytes]:
        return [line for line in self._lines.feed(chunk) if line.strip()]

    def flush(self) -> list[bytes]:
        return [line for line in self._lines.flush() if line.strip()]
