"""The admin UI's usage queries on SQLite and PostgreSQL: time buckets computed in SQL, filters,
pages and the keyset-paginated export."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from dragoman.admin.queries import UsageFilter, iter_usage, series, usage_page
from dragoman.gateway.store import Store
from dragoman.gateway.usage import UsageRecord
from dragoman.gateway.usage_store import UsageStore
from tests.gateway_fixtures import store  # noqa: F401

T0 = datetime(2025, 6, 14, 12, 0, tzinfo=UTC)


def record(minutes: float, *, key: str = "k1", model: str = "m", status: int = 200, tokens: int = 10,
           latency: float = 100.0) -> UsageRecord:
    return UsageRecord(dialect="openai", requested_model=model, ts=T0 + timedelta(minutes=minutes), key_id=key,
                       key_name=key, backend="echo", upstream_model=model, prompt_tokens=tokens,
                       completion_tokens=tokens, latency_ms=latency, status=status)


async def test_series_buckets_filters_and_pages(store: Store) -> None:  # noqa: F811
    await UsageStore(store).write_usage([
        record(0.5), record(0.7, latency=300.0), record(1.2, key="k2", status=500), record(59.9, model="other"),
        record(61.0),  # outside the hour
    ])
    hour = UsageFilter()
    points = await series(store, hour, since=T0, until=T0 + timedelta(hours=1), bucket=timedelta(minutes=1))
    assert len(points) == 60
    assert points[0]["t"] == T0.isoformat()
    assert (points[0]["requests"], points[0]["prompt_tokens"], points[0]["avg_latency_ms"]) == (2, 20, 200.0)
    assert points[0]["max_latency_ms"] == 300.0
    assert (points[1]["requests"], points[1]["errors"]) == (1, 1)
    assert points[59]["requests"] == 1
    assert sum(p["requests"] for p in points) == 4
    only_k2 = await series(store, UsageFilter(key_id="k2"), since=T0, until=T0 + timedelta(hours=1),
                           bucket=timedelta(minutes=30))
    assert [p["requests"] for p in only_k2] == [1, 0]

    items, total = await usage_page(store, UsageFilter(status="ok"), page=1, per_page=2)
    assert total == 4 and [i["ts"] for i in items] == [(T0 + timedelta(minutes=m)).isoformat() for m in (61.0, 59.9)]
    items, total = await usage_page(store, UsageFilter(status="500"), page=1, per_page=10)
    assert total == 1 and items[0]["key_id"] == "k2"
    _, total = await usage_page(store, UsageFilter(model="echo/other"), page=1, per_page=10)
    assert total == 1
    _, total = await usage_page(store, UsageFilter(since=T0 + timedelta(minutes=1), until=T0 + timedelta(hours=1)),
                                page=1, per_page=10)
    assert total == 2

    exported = [r async for r in iter_usage(store, UsageFilter(), chunk=2)]
    assert len(exported) == 5
    assert exported == sorted(exported, key=lambda r: r["ts"], reverse=True)
