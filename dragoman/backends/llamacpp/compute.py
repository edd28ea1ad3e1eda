"""One thread for every llama.cpp computation of a backend, interleaving jobs a step at a time.

llama.cpp as llama-cpp-python builds it uses OpenMP, and OpenMP gives every thread that starts a
computation its own team of worker threads. Once a process has more such threads than CPUs,
libgomp stops spinning at the barriers between graph operations and parks the threads instead,
which measured about 40% off decode speed, for the rest of the process's life (two threads ever
generating or embedding are enough: a pool's second worker, an embedding during a generation).
So generation and embeddings of every model of a backend run on this one thread. A job is an
iterator that yields after each token; jobs take turns, so a long answer on one model does not
hold up another model or an embedding for more than a token.

Loading and tokenizing start no computation and stay on an ordinary thread pool.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Generator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(slots=True)
class _Job:
    steps: Generator[None, None, Any]
    future: Future[Any]
    started: bool = False


class ComputeThread:
    """A single worker thread that runs step-wise jobs round robin."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._jobs: deque[_Job] = deque()
        self._wake = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    def submit(self, steps: Generator[None, None, T]) -> Future[T]:
        """Run ``steps`` (one ``next`` per turn); the future gets its return value or exception."""
        future: Future[T] = Future()
        with self._wake:
            if self._closed:
                steps.close()
                raise RuntimeError(f"{self._name} is shut down")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._jobs.append(_Job(steps, future))
            self._wake.notify()
        return future

    def call(self, fn: Callable[[], T]) -> Future[T]:
        """Run ``fn`` as one step."""
        return self.submit(once(fn))

    def shutdown(self) -> None:
        """Refuse new jobs and wait for the queued ones to finish (blocking: call from a thread)."""
        with self._wake:
            self._closed = True
            self._wake.notify()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._jobs and not self._closed:
                    self._wake.wait()
                if not self._jobs:
                    return
                job = self._jobs.popleft()
            if not job.started:
                job.started = True
                if not job.future.set_running_or_notify_cancel():
                    job.steps.close()  # cancelled before it ran
                    continue
            try:
                next(job.steps)
            except StopIteration as stop:
                job.future.set_result(stop.value)
                continue
            except BaseException as exc:  # noqa: BLE001 - delivered to the caller, as concurrent.futures does
                job.future.set_exception(exc)
                continue
            with self._wake:
                self._jobs.append(job)


def once(fn: Callable[[], T]) -> Generator[None, None, T]:
    """``fn`` as a job of one step."""
    result = fn()
    yield from ()
    return result
