"""Settings that the admin UI can change at run time (aliases, per-model overrides, backends).

Each setting is one row: a name and a JSON value. The config file seeds them (:func:`seed_settings`);
after that the database is the source of truth, so edits made in the admin UI survive restarts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from dragoman.gateway.store import Store
from dragoman.gateway.store.schema import settings as settings_table
from dragoman.gateway.timeutil import utcnow

SEEDED_PREFIX = "seeded:"


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


class EntryCodec(Protocol):
    """How entries of one setting are kept in the database when that differs from how they are
    compared (backend secrets: encrypted at rest, compared in clear)."""

    def encode(self, value: Any) -> Any: ...

    def decode(self, value: Any) -> Any: ...


class _Same:
    def encode(self, value: Any) -> Any:
        return value

    def decode(self, value: Any) -> Any:
        return value


async def seed_settings(
    store: Store,
    aliases: Mapping[str, Any],
    overrides: Mapping[str, Any],
    *,
    backends: Mapping[str, Any] | None = None,
    backends_codec: EntryCodec | None = None,
) -> dict[str, list[str]]:
    """Merge config-file entries into the ``aliases``/``overrides``/``backends`` settings.

    Each of those settings is a JSON object of entries (alias name -> target, model glob ->
    override, backend name -> settings). Per entry, a three-way merge with what was seeded last
    time (kept in a ``seeded:<setting>`` row):

    * an entry that was never seeded is inserted, unless the database already has one by that name
      (one made in the admin UI wins over the file);
    * an entry whose config value changed since it was last seeded is updated, but only if the
      database still holds the previously seeded value: edits made in the admin UI win;
    * an entry that was seeded and then deleted in the admin UI stays deleted;
    * entries only in the database are never touched, and removing an entry from the config file
      does not delete it from the database (delete it in the admin UI).

    So the file is a seed that can evolve, and the admin UI never loses an edit on restart.
    Returns the entry names inserted or updated, per setting. Safe to run on every start.
    ``backends_codec`` encodes what is written and decodes what is compared (values are given decoded).
    """
    wanted: dict[str, Mapping[str, Any]] = {"aliases": aliases, "overrides": overrides}
    if backends is not None:
        wanted["backends"] = backends
    changed: dict[str, list[str]] = {}
    async with store.begin() as conn:
        for name, entries in wanted.items():
            codec: EntryCodec = (backends_codec if name == "backends" else None) or _Same()
            current = dict(await _get(conn, name, {}) or {})
            before = await _get(conn, SEEDED_PREFIX + name, {}) or {}
            seeded = dict(before)
            touched: list[str] = []
            for entry, value in entries.items():
                if entry not in seeded:
                    if entry not in current:
                        current[entry] = codec.encode(value)
                        touched.append(entry)
                    seeded[entry] = codec.encode(value)
                    continue
                previous = codec.decode(seeded[entry])
                if previous == value:
                    continue
                if entry in current and codec.decode(current[entry]) == previous:
                    current[entry] = codec.encode(value)
                    touched.append(entry)
                seeded[entry] = codec.encode(value)
            if touched:
                await _put(conn, name, current)
            if seeded != before:
                await _put(conn, SEEDED_PREFIX + name, seeded)
            changed[name] = touched
    return changed
