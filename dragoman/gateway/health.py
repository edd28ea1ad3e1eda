"""Backend health, checked in the background, and readiness.

:class:`HealthMonitor` calls every backend's ``health()`` every ``interval`` seconds (each check
bounded by ``timeout``) and keeps the latest :class:`BackendHealth` per backend in ``results``
for ``/health/ready``, metrics and the admin page. The checks only report: routing decisions come
from real traffic (cooldowns), so a flaky health probe never takes capacity away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from dragoman.backends.base import Backend
from dragoman.errors import GatewayError
from dragoman.gateway.catalog import LiveCatalog

log = logging.getLogger("dragoman.health")

ReadinessCheck = Callable[[], Awaitable[str | None]]  # an error string, or None when fine


@dataclass(slots=True, frozen=True)
class BackendHealth:
    ok: bool
    last_error: str | None
    checked_at: float  # unix seconds
    model_count: int


class HealthMonitor:
    def __init__(self, live: LiveCatalog, *, interval: float = 30.0, timeout: float = 10.0,
                 model_count: Callable[[str], int] | None = None) -> None:
        self.live = live
        self.interval = interval
        self.timeout = timeout
        self._model_count = model_count or (lambda name: 0)
        self.results: dict[str, BackendHealth] = {}
        self._task: asyncio.Task[None] | None = None

    async def check_all(self) -> dict[str, BackendHealth]:
        """Check every backend of the current catalog (held open meanwhile); forget the others."""
        with self.live.pinned() as catalog:
            await asyncio.gather(*(self._check(b) for b in catalog.backends.values()))
        for name in [n for n in self.results if n not in self.live.current.backends]:
            del self.results[name]
        return self.results

    def forget(self, name: str) -> None:
        """The backend named ``name`` was replaced: the next check reports on the new one."""
        self.results.pop(name, None)

    async def _check(self, backend: Backend) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                error = await backend.health()
        except TimeoutError:
            error = f"health check timed out after {self.timeout:g}s"
        except GatewayError as exc:
            error = exc.message
        except Exception as exc:  # a backend bug must not stop the checks of the others
            log.exception("health check of backend %s failed", backend.name)
            error = f"health check failed: {type(exc).__name__}"
        previous = self.results.get(backend.name)
        if previous is not None and previous.ok != (error is None):
            if error is None:
                log.warning("backend %s is healthy again", backend.name)
            else:
                log.warning("backend %s is unhealthy: %s", backend.name, error)
        self.results[backend.name] = BackendHealth(error is None, error, time.time(),
                                                   self._model_count(backend.name))

    def any_up(self) -> bool:
        return any(h.ok for h in self.results.values())

    def start(self) -> None:
        if self.interval > 0 and self._task is None:
            self._task = asyncio.create_task(self._loop(), name="dragoman-health")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.check_all()

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def readiness(ready: bool, monitor: HealthMonitor, checks: Sequence[ReadinessCheck]
                    ) -> tuple[bool, dict[str, object]]:
    """(ready?, body): started, every readiness check passes, and at least one backend is up."""
    problems: list[str] = []
    if not ready:
        problems.append("starting")
    results = await asyncio.gather(*(c() for c in checks), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            problems.append(f"readiness check failed: {type(result).__name__}: {result}")
        elif result:
            problems.append(result)
    if not monitor.any_up():
        problems.append("no backend is healthy")
    backends = {name: {"ok": h.ok, "error": h.last_error, "checked_at": h.checked_at, "models": h.model_count}
                for name, h in monitor.results.items()}
    body: dict[str, object] = {"status": "ready" if not problems else "not_ready", "backends": backends}
    if problems:
        body["problems"] = problems
    return not problems, body
