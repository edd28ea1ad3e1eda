"""Noticing a client that leaves, and cancelling the work done for it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.types import Receive

from dragoman.errors import ErrorKind, GatewayError

T = TypeVar("T")

# A request that ends sooner never starts a watcher task (most do: a watcher per request showed
# in profiles); a client that left earlier is noticed the moment the watcher starts.
WATCH_AFTER = 0.05


class DisconnectWatch:
    """Cancels the current task when the client disconnects (``with DisconnectWatch(receive)``).

    The watcher task starts ``WATCH_AFTER`` seconds in, so a slow upstream is cancelled at most
    that late, and a quick answer costs one timer. ``gone`` tells a cancellation caused by the
    client from any other (which must propagate).
    """

    __slots__ = ("_receive", "_task", "_timer", "_watcher", "gone")

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._task: asyncio.Task[Any] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._watcher: asyncio.Task[None] | None = None
        self.gone = False

    def __enter__(self) -> DisconnectWatch:
        self._task = asyncio.current_task()
        self._timer = asyncio.get_running_loop().call_later(WATCH_AFTER, self._start)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._watcher is not None:
            self._watcher.cancel()

    def _start(self) -> None:
        self._timer = None
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self.gone = True
        if self._task is not None:
            self._task.cancel()

    def client_left(self) -> bool:
        """Asked on ``CancelledError``: True when the client caused it, which is then handled (the
        task runs on, to answer or to clean up); False means re-raise it."""
        if not self.gone:
            return False
        assert self._task is not None
        self._task.uncancel()
        return True


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await ``work`` in this task; if the client disconnects first, cancel it (a ``GatewayError``)."""
    watch = DisconnectWatch(request.receive)
    with watch:
        try:
            return await work
        except asyncio.CancelledError:
            if not watch.client_left():
                raise
            raise GatewayError(ErrorKind.CANCELLED, "client disconnected") from None
