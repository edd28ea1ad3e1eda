"""How one user of Redis (the limiter, the cooldown store) calls it under load.

A burst must queue for Redis and never be taken for Redis being down:

* **Turns**: at most ``size`` calls in flight, no more than the connections the user may take
  from the pool, so a call holding a turn never waits for a connection. The others wait for a
  turn; a wait that runs out raises :class:`RedisBusy`, which no error of Redis's can be.
* **Time limits in Redis's time**: a call that takes more than ``timeout`` seconds raises
  ``TimeoutError`` only if Redis is the slow one. A burst keeps the event loop busy, so a caller
  resumes late and a new connection's handshake takes many slow loop turns; while the loop is
  busy, or Redis answered another call within ``timeout``, the wait goes on (up to ``lag_limit``
  times ``timeout`` in all). On an idle loop a hung Redis is noticed after ``timeout``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")


class RedisBusy(Exception):
    """Every turn stayed taken for the whole wait: this instance is busy, Redis is not down."""


class RedisGate:
    """Turns and time limits for one user of Redis (see the module docstring)."""

    __slots__ = ("_answered_at", "_free", "_lag_limit", "_timeout")

    def __init__(self, size: int, *, timeout: float, lag_limit: float = 10.0) -> None:
        if size < 1:
            raise ValueError(f"size must be at least 1, not {size}")
        self._free = asyncio.Semaphore(size)
        self._timeout = timeout
        self._lag_limit = lag_limit
        self._answered_at = float("-inf")

    def turn(self, wait: float | None) -> _Turn:
        """``async with gate.turn(wait):`` waits up to ``wait`` seconds (None: no limit) for a turn."""
        return _Turn(self._free, wait)

    async def reply(self, call: Awaitable[T]) -> T:
        """``await call``, or ``TimeoutError`` once Redis (not the event loop) took ``timeout``."""
        loop = asyncio.get_running_loop()
        seconds = self._timeout
        task = asyncio.ensure_future(call)
        give_up = loop.time() + self._lag_limit * seconds
        try:
            wait = seconds
            while not task.done():
                asked = loop.time()
                await asyncio.wait((task,), timeout=wait)
                if task.done():
                    break
                now = loop.time()
                busy = await self._loop_is_busy(late=now - asked - wait, now=now)
                if not task.done() and (not busy or now >= give_up):
                    raise TimeoutError(f"Redis did not answer within {seconds:g} s")
                wait = min(seconds, give_up - now)
            result = task.result()
            self._answered_at = loop.time()
            return result
        finally:
            if not task.done():  # timed out, or this caller was cancelled: the call ends in the background
                task.add_done_callback(_retrieve)
                task.cancel()

    async def _loop_is_busy(self, *, late: float, now: float) -> bool:
        """Whether a call still waiting may be waiting on this process rather than on Redis."""
        seconds = self._timeout
        if late > seconds / 10 or now - self._answered_at < seconds:
            return True  # this caller resumed late, or Redis is answering other calls
        loop = asyncio.get_running_loop()
        await asyncio.sleep(0)  # one turn of the loop: microseconds when it is idle
        return loop.time() - now > seconds / 100


class _Turn:
    __slots__ = ("_free", "_wait")

    def __init__(self, free: asyncio.Semaphore, wait: float | None) -> None:
        self._free = free
        self._wait = wait

    async def __aenter__(self) -> None:
        free = self._free
        if not free.locked() or self._wait is None:
            await free.acquire()
            return
        try:
            async with asyncio.timeout(self._wait):
                await free.acquire()
        except TimeoutError:
            raise RedisBusy(f"no Redis turn free within {self._wait:g} s") from None

    async def __aexit__(self, *exc: object) -> None:
        self._free.release()


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Mark a call nobody awaits any more as looked at (its failure is already accounted for)."""
    if not task.cancelled():
        task.exception()
