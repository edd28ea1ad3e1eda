"""Fixtures for the control-plane tests (keys, limits, usage, store): real SQLite files,
a real PostgreSQL schema per test, a real Redis with a key prefix per test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from dragoman.gateway.store import Store
from tests.services import POSTGRES_MISSING, REDIS_MISSING, ensure_postgres, ensure_redis, unique_name


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeNow:
    """A wall clock (aware UTC datetimes) the test moves by hand."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2025, 6, 14, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)


async def open_pg_store() -> tuple[Store, str]:
    url = ensure_postgres()
    if url is None:
        pytest.skip(POSTGRES_MISSING)
    schema = unique_name("dm")
    return await Store.open(url, schema=schema), schema


async def drop_pg_schema(store: Store, schema: str) -> None:
    async with store.begin() as conn:
        await conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    await store.aclose()


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[Store]:
    store = await Store.open(f"sqlite:///{tmp_path / 'dragoman.db'}")
    yield store
    await store.aclose()


@pytest.fixture
async def pg_store() -> AsyncIterator[Store]:
    store, schema = await open_pg_store()
    yield store
    await drop_pg_schema(store, schema)


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """The same test on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        s = await Store.open(f"sqlite:///{tmp_path / 'dragoman.db'}")
        yield s
        await s.aclose()
    else:
        s, schema = await open_pg_store()
        yield s
        await drop_pg_schema(s, schema)


@pytest.fixture
async def redis_env() -> AsyncIterator[tuple[Any, str]]:
    """(redis.asyncio client, unique key prefix); every key under the prefix is deleted after."""
    url = ensure_redis()
    if url is None:
        pytest.skip(REDIS_MISSING)
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    prefix = unique_name("dmtest") + ":"
    yield client, prefix
    keys = [k async for k in client.scan_iter(match=prefix + "*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()
