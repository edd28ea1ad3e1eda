"""RedisGate: turns a burst waits for, and time limits that a busy event loop cannot trip."""

from __future__ import annotations

import asyncio
import time

import pytest

from dragoman.gateway.redis_gate import RedisBusy, RedisGate


async def test_a_burst_takes_turns_and_never_exceeds_the_size() -> None:
    gate = RedisGate(3, timeout=1.0)
    running = peak = 0

    async def call() -> None:
        nonlocal running, peak
        async with gate.turn(5.0):
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.01)
            running -= 1

    await asyncio.gather(*(call() for _ in range(30)))
    assert peak == 3


async def test_a_wait_that_runs_out_is_busy() -> None:
    gate = RedisGate(1, timeout=1.0)
    release = asyncio.Event()

    async def holder() -> None:
        async with gate.turn(None):
            await release.wait()

    held = asyncio.create_task(holder())
    await asyncio.sleep(0)
    started = time.monotonic()
    with pytest.raises(RedisBusy, match=r"no Redis turn free within 0\.05 s"):
        async with gate.turn(0.05):
            pass
    assert 0.04 < time.monotonic() - started < 0.5
    release.set()
    await held
    async with gate.turn(0.05):  # the turn was given back
        pass


async def test_a_hung_call_times_out_on_an_idle_loop() -> None:
    gate = RedisGate(1, timeout=0.1)
    hung = asyncio.Event()
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"Redis did not answer within 0\.1 s"):
        await gate.reply(hung.wait())
    assert 0.09 < time.monotonic() - started < 0.5


async def test_a_busy_loop_does_not_look_like_a_hung_redis() -> None:
    gate = RedisGate(1, timeout=0.1)

    async def redis_answers_in_20ms() -> str:
        await asyncio.sleep(0.02)
        return "OK"

    async def hog() -> None:  # the burst's own work: the loop runs nothing else for 0.3 s
        await asyncio.sleep(0)
        time.sleep(0.3)

    hogging = asyncio.create_task(hog())
    assert await gate.reply(redis_answers_in_20ms()) == "OK"
    await hogging
    with pytest.raises(TimeoutError):  # plain wall-clock limits would have taken Redis for hung
        async with asyncio.timeout(0.1):
            hogging = asyncio.create_task(hog())
            await redis_answers_in_20ms()
    await hogging


async def test_a_cancelled_caller_cancels_its_call() -> None:
    gate = RedisGate(1, timeout=5.0)
    hung = asyncio.Event()
    call = asyncio.ensure_future(hung.wait())
    caller = asyncio.create_task(gate.reply(call))
    await asyncio.sleep(0.01)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await asyncio.sleep(0)
    assert call.cancelled()
