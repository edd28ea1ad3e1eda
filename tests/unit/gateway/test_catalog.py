"""The catalog's owner: a request keeps the backends it started with; each replaced backend is
closed exactly once, after the last request that pinned it (and every one at shutdown)."""

from __future__ import annotations

from typing import Any, cast

from dragoman.backends.base import Backend
from dragoman.gateway.catalog import Catalog, LiveCatalog


class Pool:
    """Stands in for a backend: only what the owner calls (start and close), counted."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.started = 0
        self.closed = 0

    async def start(self) -> None:
        self.started += 1

    async def aclose(self) -> None:
        self.closed += 1


def catalog(*pools: Pool, **aliases: Any) -> Catalog:
    return Catalog.of(cast(list[Backend], list(pools)), aliases)


async def test_a_replaced_backend_closes_after_its_last_request() -> None:
    first, kept = Pool("up"), Pool("other")
    async with LiveCatalog.running(catalog(first, kept)) as live:
        assert (first.started, kept.started) == (1, 1)
        pin = live.pin()
        second = Pool("up")
        live.replace(catalog(second, kept, fast="up/m"))
        later = live.pin()
        live.replace(catalog(Pool("up"), kept))  # the middle catalog is left while pinned, too
        await live.drained()
        assert pin.catalog.backends["up"] is first and first.closed == 0  # still in use
        live.release(pin)
        await live.drained()
        assert first.closed == 1 and second.closed == 0 and kept.closed == 0
        assert later.catalog.aliases == {"fast": ("up/m",)}
        live.release(later)
        await live.drained()
        assert second.closed == 1 and kept.closed == 0
    assert (first.closed, second.closed, kept.closed) == (1, 1, 1)  # shutdown closes the rest, once each


async def test_shutdown_closes_backends_still_pinned_once() -> None:
    first = Pool("up")
    async with LiveCatalog.running(catalog(first)) as live:
        live.pin()
        live.replace(catalog(Pool("up")))
    assert first.closed == 1
