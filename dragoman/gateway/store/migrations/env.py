"""Alembic environment for dragoman's store.

dragoman runs migrations itself at start (``Store.open``): it hands a live synchronous connection
in ``config.attributes["connection"]`` (from ``AsyncConnection.run_sync``), so this file never
creates engines or reads ``alembic.ini``. Offline (``--sql``) mode is supported for DBAs who want
the SQL; it needs ``sqlalchemy.url`` set on the config.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from dragoman.gateway.store.schema import metadata

config = context.config


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # ALTERs on SQLite need table copies
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    _run_offline()
else:
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("dragoman migrations run through Store.open, which passes a connection")
    _run(connection)
