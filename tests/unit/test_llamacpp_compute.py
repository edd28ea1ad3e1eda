"""The llama.cpp compute thread: one OS thread, jobs interleaved a step at a time."""

from __future__ import annotations

import threading
from collections.abc import Generator

import pytest

from dragoman.backends.llamacpp.compute import ComputeThread


def steps(name: str, count: int, log: list[tuple[str, int, int]]) -> Generator[None, None, str]:
    for index in range(count):
        log.append((name, index, threading.get_ident()))
        yield
    return f"{name} done"


def test_jobs_take_turns_on_one_thread() -> None:
    compute = ComputeThread("test-compute")
    log: list[tuple[str, int, int]] = []
    gate = threading.Event()
    blocker = compute.call(gate.wait)  # hold the thread until both jobs are queued
    first, second = compute.submit(steps("a", 3, log)), compute.submit(steps("b", 2, log))
    gate.set()
    assert blocker.result(5) is True
    assert (first.result(5), second.result(5)) == ("a done", "b done")
    assert [(name, index) for name, index, _ in log] == [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2)]
    assert len({ident for _, _, ident in log}) == 1 and log[0][2] != threading.get_ident()
    compute.shutdown()


def test_errors_reach_the_caller_and_the_thread_goes_on() -> None:
    compute = ComputeThread("test-compute")

    def fail() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        compute.call(fail).result(5)
    assert compute.call(lambda: 42).result(5) == 42
    compute.shutdown()


def test_a_job_cancelled_before_its_turn_never_runs() -> None:
    compute = ComputeThread("test-compute")
    gate = threading.Event()
    ran: list[str] = []
    blocker = compute.call(gate.wait)
    waiting = compute.submit(steps("late", 1, []))
    skipped = compute.call(lambda: ran.append("ran"))
    assert skipped.cancel()
    gate.set()
    blocker.result(5)
    assert waiting.result(5) == "late done"
    compute.shutdown()
    assert ran == []


def test_shutdown_finishes_queued_jobs_then_refuses_new_ones() -> None:
    compute = ComputeThread("test-compute")
    log: list[tuple[str, int, int]] = []
    job = compute.submit(steps("a", 4, log))
    compute.shutdown()
    assert job.done() and job.result() == "a done" and len(log) == 4
    with pytest.raises(RuntimeError, match="shut down"):
        compute.call(lambda: None)
    ComputeThread("never-used").shutdown()  # no thread was ever started
