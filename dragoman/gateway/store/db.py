"""The database handle: an async SQLAlchemy engine, migrated to the current schema on open.

SQLite (a file next to the config) is the zero-setup default; PostgreSQL serves a team running
several instances. Migrations run at every start because a gateway upgrade must not need a manual
step; on PostgreSQL a transaction-scoped advisory lock makes instances that start together take
turns instead of racing to create the same tables.

The few reads a request may wait on (a key that is not cached, a budget's starting figure) go
through :meth:`Store.on_request_path`, which bounds the wait by ``request_timeout``
(``database_timeout`` in the config): a hung database then costs a request that long at most.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import delete, event, select, text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql.elements import ColumnElement

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Any constant works; it only has to be the same for every dragoman instance on one database.
_MIGRATION_LOCK_ID = 0x64726167  # "drag"
_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
DEFAULT_REQUEST_TIMEOUT = 1.0
# How long closing waits for reads that outlived their request (they hold pooled connections).
_CLOSE_WAIT = 3.0

T = TypeVar("T")


def normalize_url(url: str) -> URL:
    """Map the URLs people write to the async drivers dragoman uses.

    ``sqlite:///x.db`` -> ``sqlite+aiosqlite``; ``postgres://`` and ``postgresql://`` ->
    ``postgresql+asyncpg``. URLs that already name a driver are left alone.
    """
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    parsed = make_url(url)
    if parsed.drivername == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite")
    if parsed.drivername == "postgresql":
        return parsed.set(drivername="postgresql+asyncpg")
    return parsed


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the usage writer and readers (admin UI, CLI) work at the same time; busy_timeout
    # makes a second process wait for the write lock instead of failing at once.
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=5000")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def _ensure_parent(database: str) -> None:
    """A first start with the default ``~/.dragoman/dragoman.db`` must not fail on a missing folder."""
    Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def _alembic_config(connection: Connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = connection
    return cfg


def _upgrade(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATION_LOCK_ID})
    command.upgrade(_alembic_config(connection), "head")


def _current_revision(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


class Store:
    """Owns the engine. Build with :meth:`open`; close with :meth:`aclose`.

    Other modules (keys, usage, settings) take a ``Store`` and run their own Core statements
    through :meth:`begin` (a transaction) or :meth:`connect` (autocommit-free reads).
    """

    def __init__(self, engine: AsyncEngine, *, request_timeout: float = DEFAULT_REQUEST_TIMEOUT) -> None:
        self.engine = engine
        self.request_timeout = request_timeout
        self._outliving: set[asyncio.Future[Any]] = set()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        schema: str | None = None,
        migrate: bool = True,
        echo: bool = False,
        pool_size: int = 5,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    ) -> Store:
        """Connect and bring the schema up to date.

        ``schema`` (PostgreSQL only) puts every table, ``alembic_version`` included, in that
        schema, created if missing; tests use it to isolate runs, teams to share one database.
        """
        parsed = normalize_url(url)
        kwargs: dict[str, Any] = {"echo": echo, "pool_pre_ping": True}
        backend = parsed.get_backend_name()
        if backend == "postgresql":
            kwargs["pool_size"] = pool_size
            if schema is not None:
                if not _SCHEMA_NAME.match(schema):
                    raise ValueError(f"invalid schema name {schema!r}")
                kwargs["connect_args"] = {"server_settings": {"search_path": schema}}
        elif schema is not None:
            raise ValueError("schema= is only supported on PostgreSQL")
        if backend == "sqlite" and parsed.database and parsed.database != ":memory:":
            _ensure_parent(parsed.database)
        engine = create_async_engine(parsed, **kwargs)
        if backend == "sqlite":
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        store = cls(engine, request_timeout=request_timeout)
        try:
            if schema is not None:
                async with engine.begin() as conn:
                    await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
            if migrate:
                await store.migrate()
        except BaseException:
            await engine.dispose()
            raise
        return store

    async def migrate(self) -> None:
        """Apply pending Alembic migrations (idempotent)."""
        async with self.engine.begin() as conn:
            await conn.run_sync(_upgrade)

    async def revision(self) -> str | None:
        async with self.engine.connect() as conn:
            return await conn.run_sync(_current_revision)

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.begin() as conn:
            yield conn

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn:
            yield conn

    async def on_request_path(self, work: Awaitable[T]) -> T:
        """``await work``, but for ``request_timeout`` seconds at most (then ``TimeoutError``).

        ``work`` runs in a task of its own that a timeout leaves running rather than cancels:
        cancelling a query on a hung database waits for the connection's cleanup (seconds of
        it), the very wait this avoids. It finishes on its own once the database answers or the
        connection fails; :meth:`aclose` cancels what is still running then.
        """
        task = asyncio.ensure_future(work)
        if not task.done() and task not in self._outliving:
            self._outliving.add(task)
            task.add_done_callback(self._settled)
        return await asyncio.wait_for(asyncio.shield(task), self.request_timeout)

    def _settled(self, task: asyncio.Future[Any]) -> None:
        self._outliving.discard(task)
        if not task.cancelled():
            task.exception()  # the waiter has it, or had its TimeoutError: asyncio must not warn of it

    async def check(self) -> str | None:
        """Readiness: None when a trivial query answers within 2 s, else why not."""
        try:
            async with asyncio.timeout(2.0), self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            return f"database unreachable: {type(exc).__name__}"
        return None

    async def delete_older(self, key: ColumnElement[Any], at: ColumnElement[Any], before: datetime, *,
                           chunk: int) -> int:
        """Delete the rows of ``key``'s table whose ``at`` is before ``before``, ``chunk`` rows per
        transaction, so a large backlog never holds a long lock on a table that writers need."""
        table = key.table  # type: ignore[attr-defined]
        total = 0
        while True:
            ids = select(key).where(at < before).limit(chunk).scalar_subquery()
            async with self.begin() as conn:
                deleted = (await conn.execute(delete(table).where(key.in_(ids)))).rowcount or 0
            total += deleted
            if deleted < chunk:
                return total

    async def compact(self) -> None:
        """After overwriting secrets: leave no old copy in the file. SQLite keeps deleted rows in free
        pages and the write-ahead log until ``VACUUM`` rewrites the file and a checkpoint empties the
        log. PostgreSQL drops dead row versions in its own (auto)vacuum; dumps never contain them."""
        if self.dialect != "sqlite":
            return
        async with self.engine.connect() as conn:
            autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await autocommit.execute(text("VACUUM"))
            await autocommit.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))

    async def aclose(self) -> None:
        outliving = list(self._outliving)
        for task in outliving:
            task.cancel()
        if outliving:
            await asyncio.wait(outliving, timeout=_CLOSE_WAIT)
        await self.engine.dispose()
