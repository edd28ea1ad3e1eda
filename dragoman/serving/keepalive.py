"""Keepalive ticks around an event stream, for dialects that ping while a model thinks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator

from dragoman.core.events import Event


async def keepalive(events: AsyncIterator[Event], interval: float) -> AsyncGenerator[Event | None, None]:
    """The events, with ``None`` whenever the next one takes longer than ``interval`` seconds.

    One pump task drains ``events`` into a queue, so the event source (and the backend under it)
    always runs in a single task, whatever context it holds across its yields; waiting on the
    queue with a timeout loses nothing. Closing this generator cancels the pump; the source's
    owner closes the source.
    """
    queue: asyncio.Queue[Event | None] = asyncio.Queue()  # None: the source has ended

    async def pump() -> None:
        try:
            async for event in events:
                queue.put_nowait(event)
        finally:
            queue.put_nowait(None)

    task = asyncio.ensure_future(pump())
    try:
        while True:
            try:
                async with asyncio.timeout(interval):
                    item = await queue.get()
            except TimeoutError:
                yield None
                continue
            if item is None:
                await task  # raises what ended the pump, if anything did
                return
            yield item
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        elif not task.cancelled():
            task.exception()  # retrieved: the consumer has stopped and no longer wants it
