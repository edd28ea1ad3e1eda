"""Usage queries the admin UI needs beyond the usage store's totals: a filtered, paginated log
and time series bucketed in SQL (so a month of records never comes into Python)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, Integer, Select, case, cast, func, literal, select
from sqlalchemy.sql.elements import ColumnElement

from dragoman.gateway.store import Store
from dragoman.gateway.store.schema import usage
from dragoman.gateway.timeutil import as_utc

# range name -> (length, bucket): about 30 to 60 points per chart.
RANGES: dict[str, tuple[timedelta, timedelta]] = {
    "1h": (timedelta(hours=1), timedelta(minutes=1)),
    "24h": (timedelta(hours=24), timedelta(minutes=30)),
    "7d": (timedelta(days=7), timedelta(hours=4)),
    "30d": (timedelta(days=30), timedelta(days=1)),
}

COLUMNS = ("ts", "request_id", "key_id", "key_name", "dialect", "requested_model", "backend", "upstream_model",
           "status", "error_type", "prompt_tokens", "completion_tokens", "reasoning_tokens", "tokens_estimated",
           "latency_ms", "ttft_ms", "attempts", "cancelled", "cost")


@dataclass(slots=True, frozen=True)
class UsageFilter:
    """``status``: ``ok`` (< 400), ``error`` (>= 400) or one HTTP status code."""

    key_id: str | None = None
    model: str | None = None
    status: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def where(self, query: Select[Any]) -> Select[Any]:
        if self.key_id:
            query = query.where(usage.c.key_id == self.key_id)
        if self.model:
            upstream = usage.c.backend + literal("/") + usage.c.upstream_model
            query = query.where((usage.c.requested_model == self.model) | (upstream == self.model))
        if self.status == "ok":
            query = query.where(usage.c.status < 400)
        elif self.status == "error":
            query = query.where(usage.c.status >= 400)
        elif self.status:
            query = query.where(usage.c.status == int(self.status))
        if self.since is not None:
            query = query.where(usage.c.ts >= self.since)
        if self.until is not None:
            query = query.where(usage.c.ts < self.until)
        return query


def record_dict(row: Any) -> dict[str, Any]:
    out = {name: getattr(row, name) for name in COLUMNS}
    out["ts"] = as_utc(row.ts).isoformat()
    out["tokens_estimated"] = bool(row.tokens_estimated)
    out["cancelled"] = bool(row.cancelled)
    return out


async def usage_page(store: Store, flt: UsageFilter, *, page: int, per_page: int) -> tuple[list[dict[str, Any]], int]:
    """One page of records, newest first, and how many match in all."""
    count = flt.where(select(func.count()).select_from(usage))
    query = flt.where(select(*(usage.c[name] for name in COLUMNS)))
    query = query.order_by(usage.c.ts.desc(), usage.c.id.desc()).limit(per_page).offset((page - 1) * per_page)
    async with store.connect() as conn:
        total = int((await conn.execute(count)).scalar_one())
        rows = (await conn.execute(query)).all()
    return [record_dict(row) for row in rows], total


async def iter_usage(store: Store, flt: UsageFilter, *, chunk: int = 1000,
                     limit: int = 1_000_000) -> AsyncIterator[dict[str, Any]]:
    """Every matching record, newest first, fetched ``chunk`` at a time (for CSV export)."""
    last: tuple[datetime, int] | None = None
    sent = 0
    while sent < limit:
        query = flt.where(select(usage.c.id, *(usage.c[name] for name in COLUMNS)))
        if last is not None:  # keyset pagination: stable while new records arrive
            query = query.where((usage.c.ts < last[0]) | ((usage.c.ts == last[0]) & (usage.c.id < last[1])))
        query = query.order_by(usage.c.ts.desc(), usage.c.id.desc()).limit(min(chunk, limit - sent))
        async with store.connect() as conn:
            rows = (await conn.execute(query)).all()
        for row in rows:
            yield record_dict(row)
        sent += len(rows)
        if len(rows) < chunk:
            return
        last = (rows[-1].ts, rows[-1].id)


def _epoch(store: Store) -> ColumnElement[Any]:
    if store.dialect == "sqlite":
        return cast(func.strftime("%s", usage.c.ts), Integer)
    return cast(func.extract("epoch", usage.c.ts), BigInteger)


async def series(store: Store, flt: UsageFilter, *, since: datetime, until: datetime,
                 bucket: timedelta) -> list[dict[str, Any]]:
    """Requests, errors, tokens and mean latency per bucket, every bucket present (zeros too)."""
    size = int(bucket.total_seconds())
    slot = (_epoch(store) // size).label("slot")  # // is integer division in SQL; / is true division
    query = select(
        slot,
        func.count().label("requests"),
        func.sum(case((usage.c.status >= 400, 1), else_=0)).label("errors"),
        func.coalesce(func.sum(usage.c.prompt_tokens), 0).label("prompt_tokens"),
        func.coalesce(func.sum(usage.c.completion_tokens), 0).label("completion_tokens"),
        func.avg(usage.c.latency_ms).label("avg_latency_ms"),
        func.max(usage.c.latency_ms).label("max_latency_ms"),
    )
    query = UsageFilter(flt.key_id, flt.model, flt.status, since, until).where(query).group_by(slot)
    async with store.connect() as conn:
        found = {int(row.slot): row for row in (await conn.execute(query)).all()}
    first = int(since.timestamp()) // size
    last = (int(until.timestamp()) - 1) // size
    points = []
    for index in range(first, last + 1):
        row = found.get(index)
        points.append({
            "t": datetime.fromtimestamp(index * size, UTC).isoformat(),
            "requests": int(row.requests) if row else 0,
            "errors": int(row.errors or 0) if row else 0,
            "prompt_tokens": int(row.prompt_tokens) if row else 0,
            "completion_tokens": int(row.completion_tokens) if row else 0,
            "avg_latency_ms": round(float(row.avg_latency_ms), 1) if row and row.avg_latency_ms is not None else None,
            "max_latency_ms": round(float(row.max_latency_ms), 1) if row and row.max_latency_ms is not None else None,
        })
    return points


async def distinct_models(store: Store, *, limit: int = 500) -> list[str]:
    """Model names seen in the usage log (for the filter's suggestions)."""
    query = select(usage.c.requested_model).group_by(usage.c.requested_model).order_by(
        func.max(usage.c.ts).desc()).limit(limit)
    async with store.connect() as conn:
        return [str(row[0]) for row in (await conn.execute(query)).all()]
