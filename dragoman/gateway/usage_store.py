"""The usage table: batched inserts, aggregates for the admin UI and CLI, budgets, retention."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import String, case, func, select
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError
from sqlalchemy.sql.elements import ColumnElement

from dragoman.gateway.store import Store
from dragoman.gateway.store.schema import usage
from dragoman.gateway.timeutil import as_utc, utcnow
from dragoman.gateway.usage import RejectedRecords, UsageRecord

log = logging.getLogger(__name__)

# Aggregate dimensions -> the columns they group by.
GROUPS: dict[str, tuple[str, ...]] = {
    "key": ("key_id",),
    "model": ("requested_model",),
    "upstream": ("backend", "upstream_model"),
    "day": ("day",),
    "dialect": ("dialect",),
}


@dataclass(slots=True, frozen=True)
class UsageSummary:
    """One aggregate row; ``group`` holds the grouped columns (``key_name`` with ``key``)."""

    group: dict[str, Any]
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    cost: float | None
    avg_latency_ms: float | None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


# The usage INSERT's columns (all but the id), in table order: ``_row`` builds its tuples in it.
INSERT_COLUMNS = tuple(c.name for c in usage.columns if not c.primary_key)
# Clients choose model names: a long one is cut to its column, never a failed write.
_LIMITS = {c.name: c.type.length for c in usage.columns if isinstance(c.type, String) and c.type.length}
# (position in a row, length limit) of each string column.
_CLIPPED = tuple((i, _LIMITS[name]) for i, name in enumerate(INSERT_COLUMNS) if name in _LIMITS)


def _row(rec: UsageRecord, *, sqlite: bool) -> tuple[Any, ...]:
    """One record as the driver takes it, in ``INSERT_COLUMNS`` order, strings cut to their columns.

    SQLite keeps naive UTC text (SQLAlchemy's own ``DATETIME``/``DATE`` storage format, so its
    reads and ``ts < ?`` comparisons work unchanged); other drivers take aware datetimes."""
    ts = as_utc(rec.ts)
    day: Any = ts.date()
    stamp: Any = ts
    if sqlite:
        stamp = ts.replace(tzinfo=None).isoformat(" ", "microseconds")
        day = day.isoformat()
    row: tuple[Any, ...] = (
        stamp, day, rec.request_id, rec.key_id, rec.key_name, rec.dialect, rec.requested_model, rec.backend,
        rec.upstream_model, int(rec.prompt_tokens), int(rec.completion_tokens), int(rec.reasoning_tokens),
        bool(rec.tokens_estimated), float(rec.latency_ms), rec.ttft_ms, int(rec.status), rec.error_type,
        int(rec.attempts), bool(rec.cancelled), rec.cost,
    )
    for position, limit in _CLIPPED:  # a loop, not a call per column: this runs for every request
        value = row[position]
        if value is not None and len(value) > limit:
            clipped = list(row)
            for at, most in _CLIPPED:
                if clipped[at] is not None:
                    clipped[at] = clipped[at][:most]
            return tuple(clipped)
    return row


def _record(row: Any) -> UsageRecord:
    return UsageRecord(
        dialect=row.dialect, requested_model=row.requested_model, ts=as_utc(row.ts), key_id=row.key_id,
        key_name=row.key_name, backend=row.backend, upstream_model=row.upstream_model,
        prompt_tokens=row.prompt_tokens, completion_tokens=row.completion_tokens,
        reasoning_tokens=row.reasoning_tokens, tokens_estimated=bool(row.tokens_estimated),
        latency_ms=row.latency_ms, ttft_ms=row.ttft_ms, status=row.status, error_type=row.error_type,
        attempts=row.attempts, cancelled=bool(row.cancelled), cost=row.cost, request_id=row.request_id,
    )


class UsageStore:
    """SQL for usage records; a ``UsageSink`` for the recorder and a ``BudgetSource`` for limits."""

    def __init__(self, store: Store) -> None:
        self._store = store
        # Compiled once and fed driver-native rows: SQLAlchemy's per-row parameter processing
        # cost several times the insert itself, and a row is written for every request.
        dialect = store.engine.dialect
        compiled = usage.insert().compile(dialect=dialect, column_keys=list(INSERT_COLUMNS))
        if compiled.positiontup != list(INSERT_COLUMNS):
            raise RuntimeError(f"usage insert takes {compiled.positiontup}, not INSERT_COLUMNS")
        self._insert = str(compiled)
        self._sqlite = dialect.name == "sqlite"

    async def write_usage(self, records: Sequence[UsageRecord]) -> None:
        if not records:
            return
        sqlite = self._sqlite
        rows = [_row(rec, sqlite=sqlite) for rec in records]
        try:
            async with self._store.begin() as conn:
                await conn.exec_driver_sql(self._insert, rows)
        except (IntegrityError, DataError) as exc:
            raise RejectedRecords(str(exc.orig) if exc.orig is not None else str(exc)) from exc

    async def spent(self, key_id: str, since: datetime) -> tuple[int, float]:
        """Tokens (prompt + completion) and cost of a key's requests since ``since``; read on the
        request path, so ``TimeoutError`` after the store's ``request_timeout``."""
        return await self._store.on_request_path(self._spent(key_id, since))

    async def _spent(self, key_id: str, since: datetime) -> tuple[int, float]:
        query = select(
            func.coalesce(func.sum(usage.c.prompt_tokens + usage.c.completion_tokens), 0),
            func.coalesce(func.sum(usage.c.cost), 0.0),
        ).where(usage.c.key_id == key_id, usage.c.ts >= since)
        async with self._store.connect() as conn:
            tokens, cost = (await conn.execute(query)).one()
        return int(tokens), float(cost)

    async def aggregate(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        by: Sequence[str] = ("key",),
        key_id: str | None = None,
    ) -> list[UsageSummary]:
        """Totals grouped by any of ``key``, ``model``, ``upstream``, ``day``, ``dialect`` (an empty
        ``by`` gives one overall row). Sorted by day, then by total tokens, largest first."""
        unknown = [b for b in by if b not in GROUPS]
        if unknown:
            raise ValueError(f"cannot group usage by {', '.join(unknown)}; use {', '.join(GROUPS)}")
        group_cols = [usage.c[name] for b in by for name in GROUPS[b]]
        extra: list[ColumnElement[Any]] = []
        if "key" in by:  # a renamed key keeps one row; show its latest name
            extra.append(func.max(usage.c.key_name).label("key_name"))
        tokens = func.sum(usage.c.prompt_tokens + usage.c.completion_tokens)
        query = select(
            *group_cols,
            *extra,
            func.count().label("requests"),
            func.sum(case((usage.c.status >= 400, 1), else_=0)).label("errors"),
            func.coalesce(func.sum(usage.c.prompt_tokens), 0).label("prompt_tokens"),
            func.coalesce(func.sum(usage.c.completion_tokens), 0).label("completion_tokens"),
            func.coalesce(func.sum(usage.c.reasoning_tokens), 0).label("reasoning_tokens"),
            func.sum(usage.c.cost).label("cost"),
            func.avg(usage.c.latency_ms).label("avg_latency_ms"),
        )
        if since is not None:
            query = query.where(usage.c.ts >= since)
        if until is not None:
            query = query.where(usage.c.ts < until)
        if key_id is not None:
            query = query.where(usage.c.key_id == key_id)
        if group_cols:
            query = query.group_by(*group_cols)
        order: list[Any] = [usage.c.day] if "day" in by else []
        query = query.order_by(*order, tokens.desc(), *group_cols)
        async with self._store.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        names = [c.name for c in group_cols] + (["key_name"] if "key" in by else [])
        return [
            UsageSummary(
                group={n: row[n] for n in names}, requests=int(row["requests"]), errors=int(row["errors"] or 0),
                prompt_tokens=int(row["prompt_tokens"]), completion_tokens=int(row["completion_tokens"]),
                reasoning_tokens=int(row["reasoning_tokens"]),
                cost=None if row["cost"] is None else float(row["cost"]),
                avg_latency_ms=None if row["avg_latency_ms"] is None else float(row["avg_latency_ms"]),
            )
            for row in rows
            if row["requests"]
        ]

    async def recent(self, *, limit: int = 100, key_id: str | None = None) -> list[UsageRecord]:
        """The newest records first (for the admin UI)."""
        query = select(usage).order_by(usage.c.ts.desc(), usage.c.id.desc()).limit(limit)
        if key_id is not None:
            query = query.where(usage.c.key_id == key_id)
        async with self._store.connect() as conn:
            return [_record(row) for row in (await conn.execute(query)).all()]

    async def prune(self, before: datetime, *, chunk: int = 5000) -> int:
        """Delete records older than ``before``, ``chunk`` rows per transaction so a large backlog
        never holds a long lock on the table the usage writer needs."""
        return await self._store.delete_older(usage.c.id, usage.c.ts, before, chunk=chunk)


class UsagePruner:
    """Deletes records older than ``retention_days`` now and then every ``interval`` seconds."""

    def __init__(self, usage_store: UsageStore, *, retention_days: float = 90, interval: float = 3600.0,
                 now: Callable[[], datetime] = utcnow) -> None:
        if retention_days <= 0:
            raise ValueError("usage.retention_days must be positive")
        self._usage = usage_store
        self._retention = timedelta(days=retention_days)
        self._interval = interval
        self._now = now
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> int:
        cutoff = self._now() - self._retention
        deleted = await self._usage.prune(cutoff)
        if deleted:
            log.info("pruned %d usage records older than %s", deleted, cutoff.isoformat())
        return deleted

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_once()
            except (SQLAlchemyError, OSError) as exc:
                log.warning("usage retention: pruning failed (%s); retrying in %.0fs", exc, self._interval)
            await asyncio.sleep(self._interval)

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="dragoman-usage-retention")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
