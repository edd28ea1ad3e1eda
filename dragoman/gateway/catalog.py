"""What the gateway serves right now (backends, aliases, overrides), and its one owner.

A :class:`Catalog` is never changed: a live edit (the admin UI) builds a new one and
:meth:`LiveCatalog.replace` swaps it in at once. A request *pins* the catalog current when it
starts and uses that one to the end, so it keeps the backend it started with; a backend that no
catalog in use still holds is closed once the last request pinning an older catalog ends (each
backend owns a connection pool: an edit must not leak one).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeVar

from dragoman.backends.base import Backend
from dragoman.config import OverrideConfig

log = logging.getLogger("dragoman.catalog")


K = TypeVar("K")
V = TypeVar("V")


def _frozen(items: Mapping[K, V]) -> Mapping[K, V]:
    return MappingProxyType(dict(items))


@dataclass(frozen=True, slots=True)
class Catalog:
    """Backends by name, aliases (name or glob -> targets, in matching order), overrides (glob -> rule)."""

    backends: Mapping[str, Backend] = field(default_factory=dict)
    aliases: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    overrides: Mapping[str, OverrideConfig] = field(default_factory=dict)

    @classmethod
    def of(cls, backends: Iterable[Backend], aliases: Mapping[str, str | Iterable[str]] | None = None,
           overrides: Mapping[str, OverrideConfig] | None = None) -> Catalog:
        return cls(_frozen({b.name: b for b in backends}),
                   _frozen({name: (t,) if isinstance(t, str) else tuple(t) for name, t in (aliases or {}).items()}),
                   _frozen(overrides or {}))


class Pin:
    """One user of one catalog (a request, a model listing, a health check)."""

    __slots__ = ("catalog", "users")

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.users = 0


class LiveCatalog:
    """The one owner of the current :class:`Catalog` and of every backend it has ever held.

    Backends of the first catalog are started by :meth:`running`; a caller of :meth:`replace` has
    started the new ones. Every backend is closed exactly once: when it leaves the catalog and no
    request still uses it, or at shutdown.
    """

    def __init__(self, catalog: Catalog) -> None:
        self._current = Pin(catalog)
        self._retired: list[Pin] = []
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def current(self) -> Catalog:
        return self._current.catalog

    def pin(self) -> Pin:
        """The current catalog, held until :meth:`release`: its backends stay open until then."""
        pin = self._current
        pin.users += 1
        return pin

    def release(self, pin: Pin) -> None:
        pin.users -= 1
        if pin.users == 0 and pin is not self._current:
            self._reap()

    @contextlib.contextmanager
    def pinned(self) -> Iterator[Catalog]:
        pin = self.pin()
        try:
            yield pin.catalog
        finally:
            self.release(pin)

    def replace(self, catalog: Catalog) -> None:
        """Serve ``catalog`` from now on (its new backends already started); backends it drops are
        closed once the requests still using them end."""
        old, self._current = self._current, Pin(catalog)
        self._retired.append(old)
        self._reap()

    def in_use(self) -> list[Backend]:
        """Every backend not closed yet: the current ones and those old requests still hold."""
        seen: dict[int, Backend] = {}
        for pin in (self._current, *self._retired):
            for backend in pin.catalog.backends.values():
                seen.setdefault(id(backend), backend)
        return list(seen.values())

    def _reap(self) -> None:
        """Close the backends only unused retired catalogs hold, and forget those catalogs. (A
        backend closed here is in no catalog left, so no later call sees it again.)"""
        held = {id(b) for pin in (self._current, *self._retired) if pin.users or pin is self._current
                for b in pin.catalog.backends.values()}
        for pin in [p for p in self._retired if not p.users]:
            self._retired.remove(pin)
            for backend in pin.catalog.backends.values():
                if id(backend) not in held:
                    held.add(id(backend))  # once, though several of these catalogs hold it
                    task = asyncio.get_running_loop().create_task(_close(backend), name=f"close-{backend.name}")
                    self._closing.add(task)
                    task.add_done_callback(self._closing.discard)

    async def drained(self) -> None:
        """Wait for the closes already scheduled (tests and shutdown)."""
        while self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, catalog: Catalog) -> AsyncIterator[LiveCatalog]:
        """Start the catalog's backends; on exit close every backend still open."""
        live = cls(catalog)
        started: list[Backend] = []
        try:
            for backend in catalog.backends.values():
                await backend.start()
                started.append(backend)
        except BaseException:
            for backend in reversed(started):
                await _close(backend)
            raise
        try:
            yield live
        finally:
            await live.aclose()

    async def aclose(self) -> None:
        await self.drained()
        backends = self.in_use()
        self._retired.clear()
        for backend in reversed(backends):
            await _close(backend)


async def _close(backend: Backend) -> None:
    try:
        await backend.aclose()
    except Exception:
        log.exception("closing backend %s failed", backend.name)
