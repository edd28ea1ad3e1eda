"""Settings kept in the database: one row per name, a JSON value (the admin UI's aliases,
overrides and backends, the admin password and session secret)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from dragoman.gateway.store import Store
from dragoman.gateway.store.schema import settings as settings_table
from dragoman.gateway.timeutil import utcnow

SEEDED_PREFIX = "seeded:"  # an older layout's rows, read once to migrate them (see dragoman.admin.live)


class SettingsStore:
    """Get and set JSON settings by name."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def get(self, name: str, default: Any = None) -> Any:
        async with self._store.connect() as conn:
            return await _get(conn, name, default)

    async def all(self) -> dict[str, Any]:
        """Every setting except the seeding bookkeeping rows."""
        async with self._store.connect() as conn:
            rows = (await conn.execute(select(settings_table.c.name, settings_table.c.value))).all()
        return {name: value for name, value in rows if not name.startswith(SEEDED_PREFIX)}

    async def set(self, name: str, value: Any) -> None:
        async with self._store.begin() as conn:
            await _put(conn, name, value)

    async def delete(self, name: str) -> bool:
        async with self._store.begin() as conn:
            result = await conn.execute(delete(settings_table).where(settings_table.c.name == name))
        return bool(result.rowcount)


async def _get(conn: AsyncConnection, name: str, default: Any = None) -> Any:
    row = (await conn.execute(select(settings_table.c.value).where(settings_table.c.name == name))).first()
    return default if row is None else row[0]


async def _put(conn: AsyncConnection, name: str, value: Any) -> None:
    """Upsert in one statement, so two instances writing at once cannot collide on the key."""
    values = {"name": name, "value": value, "updated_at": utcnow()}
    stmt: Any
    if conn.dialect.name == "postgresql":
        stmt = pg_insert(settings_table).values(**values)
    elif conn.dialect.name == "sqlite":
        stmt = sqlite_insert(settings_table).values(**values)
    else:
        raise NotImplementedError(f"settings upsert is not implemented for {conn.dialect.name}")
    stmt = stmt.on_conflict_do_update(
        index_elements=[settings_table.c.name],
        set_={"value": stmt.excluded.value, "updated_at": stmt.excluded.updated_at},
    )
    await conn.execute(stmt)
