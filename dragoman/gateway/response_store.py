"""Stored Responses API answers in the gateway's database (SQLite or PostgreSQL).

One row per response: the response object, its request's input items and the conversation
through it, as JSON. A row is the whole state a later ``previous_response_id`` needs, so a chain
continues on any worker, instance or backend, and after a restart. A row is seen only by the key
that created it (its SHA-256, compared in constant time), and only for ``retention_days``: reads
skip older rows, and a pruner deletes them now and then.

Reads the request path waits on, and the writes a whole answer waits for, are bounded by the
store's ``request_timeout``: a write that outlives it still completes, the answer does not wait.
Answers that finish together share one transaction (a group commit: see ``_commit_queued``).
A write that fails is logged and the answer served: storing is a convenience, never the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from dragoman.errors import ErrorKind, GatewayError
from dragoman.gateway.store import Store
from dragoman.gateway.store.schema import responses
from dragoman.gateway.timeutil import utcnow

log = logging.getLogger(__name__)

# Statuses a background response is still generating in: only these may change.
ACTIVE = ("queued", "in_progress")
PRUNE_INTERVAL = 3600.0
INSERT_COLUMNS = ("id", "owner", "created_at", "status", "background", "body", "input_items", "history")


@dataclass(slots=True, frozen=True)
class ResponseRow:
    id: str
    status: str
    background: bool
    body: dict[str, Any]
    input_items: list[dict[str, Any]]
    history: list[Any]


def _unavailable(exc: BaseException) -> GatewayError:
    log.warning("stored responses: the database failed (%s: %s)", type(exc).__name__, exc)
    return GatewayError(ErrorKind.UPSTREAM_UNAVAILABLE, "stored responses are unavailable right now (the "
                        "gateway's database did not answer); try again, or send the whole conversation",
                        status=503, retry_after=1)


class DatabaseResponseStore:
    """The ``responses`` table; also prunes it (:meth:`start`, :meth:`aclose`)."""

    def __init__(self, store: Store, *, retention_days: float = 30, max_bytes: int = 16 << 20,
                 now: Callable[[], datetime] = utcnow) -> None:
        self._store = store
        self.retention = timedelta(days=retention_days)
        self.max_bytes = max_bytes
        self._now = now
        self._task: asyncio.Task[None] | None = None
        self._queue: list[tuple[tuple[Any, ...], asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        # A row is written for nearly every Responses request: the INSERT is compiled once and fed
        # the JSON already encoded (by orjson, once, which also measures it), as the usage writer does.
        dialect = store.engine.dialect
        compiled = insert(responses).compile(dialect=dialect, column_keys=list(INSERT_COLUMNS))
        if compiled.positiontup != list(INSERT_COLUMNS):
            raise RuntimeError(f"responses insert takes {compiled.positiontup}, not {INSERT_COLUMNS}")
        self._insert_sql = str(compiled)
        self._sqlite = dialect.name == "sqlite"

    # ------------------------------------------------------------------------- writes

    async def save(self, response_id: str, owner: str, *, status: str, background: bool, body: dict[str, Any],
                   input_items: list[dict[str, Any]], history: list[Any]) -> bool:
        """Insert a response; False (logged) when it is too big or the database failed."""
        documents = [orjson.dumps(document).decode() for document in (body, input_items, history)]
        size = sum(map(len, documents))
        if size > self.max_bytes:
            log.info("response %s not stored: %d bytes, more than responses.max_response_bytes (%d)",
                     response_id, size, self.max_bytes)
            return False
        created: Any = self._now()
        if self._sqlite:  # SQLAlchemy's own DATETIME text, as UTCDateTime stores it
            created = created.replace(tzinfo=None).isoformat(" ", "microseconds")
        row = (response_id, owner, created, status, background, *documents)
        return await self._write(response_id, self._insert(row))

    async def _insert(self, row: tuple[Any, ...]) -> bool:
        """Queue the row for the next group commit and wait for it (the database's error, if any)."""
        done = asyncio.get_running_loop().create_future()
        self._queue.append((row, done))
        if self._writer is None:
            self._writer = asyncio.create_task(self._commit_queued(), name="dragoman-responses-writer")
        await done
        return True

    async def _commit_queued(self) -> None:
        """Group commit: the rows queued while one transaction runs go together in the next, so
        concurrent answers share a commit (SQLite takes one writer at a time anyway)."""
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                try:
                    async with self._store.begin() as conn:
                        await conn.exec_driver_sql(self._insert_sql, [row for row, _ in batch])
                except BaseException as exc:
                    for _, done in batch:
                        if not done.done():
                            done.set_exception(exc if isinstance(exc, Exception) else asyncio.CancelledError())
                    if not isinstance(exc, Exception):
                        raise
                else:
                    for _, done in batch:
                        if not done.done():
                            done.set_result(None)
        finally:
            self._writer = None

    async def finish(self, response_id: str, *, status: str, body: dict[str, Any],
                     history: list[Any] | None = None) -> bool:
        """A background response's new state, only while it is still queued or in progress (a
        cancel, from any worker, wins); False when it was not."""
        values: dict[str, Any] = {"status": status, "body": body}
        if history is not None:
            values["history"] = history
        return await self._write(response_id, self._update(response_id, values))

    async def _update(self, response_id: str, values: dict[str, Any]) -> bool:
        query = update(responses).where(responses.c.id == response_id, responses.c.status.in_(ACTIVE)).values(
            **values)
        async with self._store.begin() as conn:
            return bool((await conn.execute(query)).rowcount)

    async def _write(self, response_id: str, work: Any) -> bool:
        try:
            return bool(await self._store.on_request_path(self._logged(response_id, work)))
        except TimeoutError:
            log.warning("storing response %s takes longer than the database timeout; answering without waiting",
                        response_id)
            return False

    @staticmethod
    async def _logged(response_id: str, work: Any) -> bool:
        try:
            return bool(await work)
        except (SQLAlchemyError, OSError) as exc:
            log.warning("storing response %s failed (%s: %s); it was answered, not stored", response_id,
                        type(exc).__name__, exc)
            return False

    # -------------------------------------------------------------------------- reads

    async def get(self, response_id: str, owner: str) -> ResponseRow | None:
        """The response, when ``owner`` created it and it is within the retention; a 503
        ``GatewayError`` when the database does not answer in time."""
        try:
            return await self._store.on_request_path(self._get(response_id, owner))
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            raise _unavailable(exc) from exc

    async def _get(self, response_id: str, owner: str) -> ResponseRow | None:
        query = select(responses).where(responses.c.id == response_id,
                                        responses.c.created_at >= self._now() - self.retention)
        async with self._store.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None or not hmac.compare_digest(row.owner.encode(), owner.encode()):
            return None
        return ResponseRow(id=row.id, status=row.status, background=bool(row.background), body=row.body,
                           input_items=row.input_items, history=row.history)

    async def delete(self, response_id: str, owner: str) -> bool:
        if await self.get(response_id, owner) is None:
            return False
        try:
            return await self._store.on_request_path(self._delete(response_id, owner))
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            raise _unavailable(exc) from exc

    async def _delete(self, response_id: str, owner: str) -> bool:
        async with self._store.begin() as conn:
            query = delete(responses).where(responses.c.id == response_id, responses.c.owner == owner)
            return bool((await conn.execute(query)).rowcount)

    # ------------------------------------------------------------------------ retention

    async def prune(self, *, chunk: int = 1000) -> int:
        """Delete responses past the retention, ``chunk`` rows per transaction."""
        cutoff = self._now() - self.retention
        total = await self._store.delete_older(responses.c.id, responses.c.created_at, cutoff, chunk=chunk)
        if total:
            log.info("pruned %d stored responses older than %s", total, cutoff.isoformat())
        return total

    async def _loop(self) -> None:
        # A short retention (tests, privacy-minded setups) is pruned as often as it expires.
        interval = max(1.0, min(PRUNE_INTERVAL, self.retention.total_seconds()))
        while True:
            try:
                await self.prune()
            except (SQLAlchemyError, OSError) as exc:
                log.warning("stored responses: pruning failed (%s); retrying in %.0fs", exc, interval)
            await asyncio.sleep(interval)

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="dragoman-responses-retention")

    async def aclose(self) -> None:
        if self._writer is not None:  # the rows answered last are written, or fail, before the database closes
            await asyncio.wait([self._writer], timeout=5.0)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
