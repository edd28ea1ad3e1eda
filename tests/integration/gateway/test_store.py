"""The store on SQLite and PostgreSQL: migrations, keys, usage aggregates, retention, settings."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from dragoman.errors import GatewayError
from dragoman.gateway.keys import KeyService
from dragoman.gateway.settings import SEEDED_PREFIX, SettingsStore
from dragoman.gateway.store import Store, normalize_url
from dragoman.gateway.store.schema import metadata
from dragoman.gateway.usage import UsageRecord
from dragoman.gateway.usage_store import UsagePruner, UsageStore
from tests.gateway_fixtures import FakeNow, drop_pg_schema, open_pg_store


def _schema_diff(conn: Connection) -> list[Any]:
    return list(compare_metadata(MigrationContext.configure(conn), metadata))


def _tables(conn: Connection) -> set[str]:
    return set(inspect(conn).get_table_names())


def test_url_normalisation() -> None:
    assert normalize_url("sqlite:///x.db").drivername == "sqlite+aiosqlite"
    assert normalize_url("postgresql://u@h/db").drivername == "postgresql+asyncpg"
    assert normalize_url("postgres://u@h:5433/db").render_as_string() == "postgresql+asyncpg://u@h:5433/db"
    assert normalize_url("postgresql+asyncpg://u@h/db").drivername == "postgresql+asyncpg"


async def test_fresh_sqlite_file_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dragoman.db"  # the folder does not exist yet
    store = await Store.open(f"sqlite:///{path}")
    try:
        assert path.exists()
        assert await store.revision() == "0002"
        async with store.connect() as conn:
            assert (await conn.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
            tables = await conn.run_sync(_tables)
            assert {"api_keys", "usage_records", "settings", "responses", "alembic_version"} <= tables
            assert await conn.run_sync(_schema_diff) == []  # the migrations build exactly schema.py
    finally:
        await store.aclose()
    again = await Store.open(f"sqlite:///{path}")  # idempotent on an up-to-date database
    assert await again.revision() == "0002"
    await again.aclose()


async def test_postgres_schema_is_migrated() -> None:
    store, schema = await open_pg_store()
    try:
        assert await store.revision() == "0002"
        async with store.connect() as conn:
            assert (await conn.execute(text("SELECT current_schema()"))).scalar() == schema
            tables = await conn.run_sync(_tables)
            assert {"api_keys", "usage_records", "settings", "responses", "alembic_version"} <= tables
            assert await conn.run_sync(_schema_diff) == []
        url = str(store.engine.url.render_as_string(hide_password=False))
        again = await Store.open(url, schema=schema)  # a second instance starting on the same database
        assert await again.revision() == "0002"
        await again.aclose()
    finally:
        await drop_pg_schema(store, schema)


async def test_keys_on_both_databases(store: Store) -> None:
    service = KeyService(store)
    info, secret = await service.create("alice", models=["up/*"], expires_at=datetime(2030, 1, 1, tzinfo=UTC),
                                        metadata={"team": "x", "n": [1, 2]})
    principal = await service.authenticate(secret)
    assert principal.expires_at == datetime(2030, 1, 1, tzinfo=UTC)
    assert principal.metadata == {"team": "x", "n": [1, 2]}
    assert info.created_at.tzinfo is not None
    with pytest.raises(GatewayError):
        await service.create("alice")
    await service.revoke(info.id)
    assert await service.list_keys() == []


def _usage(now: datetime) -> list[UsageRecord]:
    day = timedelta(days=1)
    return [
        UsageRecord("openai", "smart", ts=now, key_id="k1", key_name="alice", backend="up", upstream_model="gpt",
                    prompt_tokens=100, completion_tokens=50, reasoning_tokens=10, latency_ms=100, cost=1.5),
        UsageRecord("openai", "smart", ts=now - day, key_id="k1", key_name="alice", backend="up",
                    upstream_model="gpt", prompt_tokens=10, completion_tokens=5, latency_ms=300, cost=0.5),
        UsageRecord("ollama", "local/x", ts=now, key_id="k2", key_name="bob", backend="local",
                    upstream_model="x", prompt_tokens=1000, completion_tokens=1000, latency_ms=50),
        UsageRecord("anthropic", "smart", ts=now, key_id="k2", key_name="bob-renamed", status=429,
                    error_type="rate_limited", latency_ms=1),
        UsageRecord("openai", "old", ts=now - 100 * day, key_id="k1", key_name="alice", prompt_tokens=7),
        UsageRecord("openai", "x" * 1000, ts=now, prompt_tokens=1),  # over-long names are cut, not refused
    ]


async def test_usage_aggregates(store: Store) -> None:
    now = datetime(2025, 6, 14, 12, 0, tzinfo=UTC)
    usage = UsageStore(store)
    await usage.write_usage(_usage(now))
    since = now - timedelta(days=7)

    by_key = {r.group["key_id"]: r for r in await usage.aggregate(since=since, by=["key"])}
    assert set(by_key) == {"k1", "k2", None}
    k1, k2 = by_key["k1"], by_key["k2"]
    assert (k1.requests, k1.prompt_tokens, k1.completion_tokens, k1.reasoning_tokens) == (2, 110, 55, 10)
    assert k1.cost == pytest.approx(2.0) and k1.avg_latency_ms == pytest.approx(200)
    assert (k2.requests, k2.errors, k2.total_tokens, k2.cost) == (2, 1, 2000, None)
    assert k2.group["key_name"] in ("bob", "bob-renamed")
    first = (await usage.aggregate(since=since, by=["key"]))[0]
    assert first.group["key_id"] == "k2"  # most tokens first

    by_model = {r.group["requested_model"]: r.requests for r in await usage.aggregate(since=since, by=["model"])}
    assert by_model == {"smart": 3, "local/x": 1, "x" * 255: 1}

    by_day = await usage.aggregate(since=since, by=["day"])
    assert [(r.group["day"], r.requests) for r in by_day] == [(date(2025, 6, 13), 1), (date(2025, 6, 14), 4)]

    by_up = {(r.group["backend"], r.group["upstream_model"]): r.requests
             for r in await usage.aggregate(since=since, by=["upstream"])}
    assert by_up[("up", "gpt")] == 2

    (total,) = await usage.aggregate(by=[])
    assert total.requests == 6
    (only_k1,) = await usage.aggregate(since=since, by=[], key_id="k1")
    assert only_k1.requests == 2
    assert await usage.spent("k1", now - timedelta(hours=1)) == (150, 1.5)
    assert await usage.spent("nobody", since) == (0, 0.0)
    with pytest.raises(ValueError):
        await usage.aggregate(by=["colour"])


async def test_usage_rows_compare_exactly_at_the_boundary(store: Store) -> None:
    # Rows are written driver-native (not through SQLAlchemy's types); a bound ``since`` must
    # still compare exactly with them, whole seconds included, and read back the same instant.
    usage = UsageStore(store)
    exact = datetime(2025, 6, 14, 12, 0, 0, tzinfo=UTC)
    other_zone = datetime(2025, 6, 14, 14, 0, 0, 1, tzinfo=timezone(timedelta(hours=2)))
    await usage.write_usage([UsageRecord("openai", "m", ts=exact, key_id="k", prompt_tokens=1),
                             UsageRecord("openai", "m", ts=other_zone, key_id="k", prompt_tokens=10)])
    assert await usage.spent("k", exact) == (11, 0.0)
    assert await usage.spent("k", exact + timedelta(microseconds=1)) == (10, 0.0)
    assert await usage.spent("k", exact + timedelta(microseconds=2)) == (0, 0.0)
    assert sorted(r.ts for r in await usage.recent(key_id="k")) == [exact, exact + timedelta(microseconds=1)]
    (day,) = await usage.aggregate(by=["day"], key_id="k")
    assert day.group["day"] == date(2025, 6, 14)


async def test_retention_prunes_old_records(store: Store) -> None:
    now = FakeNow(datetime(2025, 6, 14, 12, 0, tzinfo=UTC))
    usage = UsageStore(store)
    await usage.write_usage(_usage(now.now))
    assert await usage.prune(now.now - timedelta(days=3650)) == 0
    pruner = UsagePruner(usage, retention_days=90, now=now)
    assert await pruner.run_once() == 1  # the 100-day-old record
    assert [r.requested_model for r in await usage.recent(key_id="k1")] == ["smart", "smart"]
    # Chunked deletes get through a backlog larger than one chunk.
    await usage.write_usage([UsageRecord("openai", "bulk", ts=now.now - timedelta(days=200)) for _ in range(25)])
    assert await usage.prune(now.now - timedelta(days=90), chunk=10) == 25
    await pruner.start()  # the background task runs once at start and stops cleanly
    await pruner.aclose()
    with pytest.raises(ValueError):
        UsagePruner(usage, retention_days=0)


async def test_settings_rows(store: Store) -> None:
    # What the config file declares is never written here (see dragoman.admin.live): only rows.
    settings = SettingsStore(store)
    await settings.set("aliases", {"fast": "up/a", "smart": None})
    await settings.set("aliases", {"fast": "up/edited", "mine": "up/c"})  # an upsert
    await settings.set(SEEDED_PREFIX + "aliases", {"fast": "up/a"})
    assert await settings.get("aliases") == {"fast": "up/edited", "mine": "up/c"}
    assert set(await settings.all()) == {"aliases"}  # bookkeeping rows hidden
    assert await settings.delete("aliases") and not await settings.delete("aliases")
    assert await settings.get("missing", 42) == 42
