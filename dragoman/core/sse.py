"""Incremental decoders for upstream streams (SSE and NDJSON), across chunk boundaries.

Pure functions of the bytes fed in: no I/O, so they are unit-tested on split fixtures. Each
byte is scanned once, however the stream is chunked (a line arriving in many small chunks
costs time linear in its length), and a line or event may not grow past ``max_frame``
bytes: past that the decoder raises :class:`FrameTooLarge` rather than buffer without end.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_FRAME = 8 << 20  # bytes in one line (NDJSON) or one event's data (SSE)


class FrameTooLarge(ValueError):
    """A line or event longer than the decoder's ``max_frame``."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"a stream frame is longer than {limit} bytes")
        self.limit = limit


@dataclass(slots=True)
class ServerSentEvent:
    event: str | None
    data: str


class LineSplitter:
    """Splits a byte stream into lines on ``\\n``, ``\\r\\n`` or ``\\r``, whatever the chunking.

    Each chunk is scanned once, by C-level ``bytes`` methods; only the unfinished last line is
    kept between chunks, and it may not grow past ``max_line`` bytes."""

    __slots__ = ("_buffer", "_max_line", "_pending_cr")

    def __init__(self, max_line: int = DEFAULT_MAX_FRAME) -> None:
        self._buffer = bytearray()  # the start of a line whose end has not arrived
        self._pending_cr = False  # the last chunk ended in "\r": a "\n" starting the next one belongs to it
        self._max_line = max_line

    def feed(self, chunk: bytes) -> list[bytes]:
        if self._pending_cr:
            self._pending_cr = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if b"\r" in chunk:
            self._pending_cr = chunk.endswith(b"\r")
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buffer = self._buffer
        if b"\n" not in chunk:
            buffer += chunk
            if len(buffer) > self._max_line:
                raise FrameTooLarge(self._max_line)
            return []
        lines = chunk.split(b"\n")
        rest = lines.pop()
        if buffer:
            buffer += lines[0]
            lines[0] = bytes(buffer)
            buffer.clear()
        buffer += rest
        limit = self._max_line
        # Only a line that began earlier, or a chunk longer than the limit, can hold a line past it.
        could_exceed = len(lines[0]) > limit or len(chunk) > limit
        if len(buffer) > limit or (could_exceed and max(map(len, lines)) > limit):
            raise FrameTooLarge(limit)
        return lines

    def flush(self) -> list[bytes]:
        rest = bytes(self._buffer)
        self._buffer.clear()
        return [rest] if rest else []


class SSEDecoder:
    """The WHATWG event-stream parser: ``event:``, ``data:`` (multi-line), comments, blank-line dispatch.

    ``max_frame`` bounds one line and the data of one event."""

    __slots__ = ("_data", "_event", "_lines", "_max_frame", "_size")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._lines = LineSplitter(max_frame)
        self._max_frame = max_frame
        self._event: str | None = None
        self._data: list[str] = []
        self._size = 0  # characters of data in the event being read

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
                self._size = 0
                continue
            line = raw.decode("utf-8", errors="replace")
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            if value.startswith(" "):
                value = value[1:]
            if name == "data":
                self._size += len(value) + 1
                if self._size > self._max_frame:
                    raise FrameTooLarge(self._max_frame)
                self._data.append(value)
            elif name == "event":
                self._event = value
        return events


class NDJSONDecoder:
    """Yields complete, non-blank lines of a newline-delimited JSON stream (each at most ``max_frame`` bytes)."""

    __slots__ = ("_lines",)

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._lines = LineSplitter(max_frame)

    def feed(self, chunk: bytes) -> list[bytes]:
        return [line for line in self._lines.feed(chunk) if line.strip()]

    def flush(self) -> list[bytes]:
        return [line for line in self._lines.flush() if line.strip()]
