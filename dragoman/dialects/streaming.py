"""The loop every dialect's streaming response runs: canonical events in, encoded frames out."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable

from dragoman.core.events import Event, StreamError
from dragoman.core.service import ChatStream


async def encoded(events: ChatStream, encode: Callable[[Event], bytes], *, tail: bytes = b"",
                  ticks: AsyncGenerator[Event | None, None] | None = None, ping: bytes = b"") -> AsyncIterator[bytes]:
    """Each event's frame (empty ones skipped), up to and including an error's; ``tail`` after.

    With ``ticks`` (a keepalive around ``events``) its ``None`` items go out as ``ping``. However
    the response ends, ``events`` is closed here, which stops the upstream call.
    """
    source: AsyncIterator[Event | None] = ticks if ticks is not None else aiter(events)
    batches = getattr(events, "batch", None) if ticks is None else None
    if batches is not None:  # what one upstream read delivered, written at once
        try:
            while batch := await batches():
                frames = [encode(event) for event in batch]
                data = b"".join(frames)
                if data:
                    yield data
                if isinstance(batch[-1], StreamError):
                    break
        finally:
            await events.aclose()
        if tail:
            yield tail
        return
    try:
        async for event in source:
            if event is None:
                yield ping
                continue
            frame = encode(event)
            if frame:
                yield frame
            if isinstance(event, StreamError):
                break
    finally:
        if ticks is not None:
            await ticks.aclose()
        await events.aclose()
    if tail:
        yield tail
