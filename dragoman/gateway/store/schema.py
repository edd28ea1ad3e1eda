"""The gateway's tables, as SQLAlchemy Core (no ORM: the queries are few and hot paths stay lean).

The Alembic migrations in ``migrations/versions`` create exactly this schema; a test compares the
two, so a change here needs a new migration (``alembic revision --autogenerate`` works against it).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Dialect,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
)
from sqlalchemy.types import TypeDecorator

from dragoman.gateway.timeutil import as_utc

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out, on every database.

    PostgreSQL keeps ``timestamptz``; SQLite has no time zones, so values are stored as naive UTC
    (which also keeps its text comparison in ``WHERE ts < ?`` correct) and come back aware.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = as_utc(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)


# SQLite only auto-increments an INTEGER PRIMARY KEY, not BIGINT.
BigId = BigInteger().with_variant(Integer(), "sqlite")

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("hint", String(16), nullable=False),  # the secret's last characters, to tell keys apart
    Column("models", JSON, nullable=False),
    Column("expires_at", UTCDateTime, nullable=True),
    Column("rpm", Integer, nullable=True),
    Column("tpm", Integer, nullable=True),
    Column("max_parallel", Integer, nullable=True),
    Column("budget_tokens", BigInteger, nullable=True),
    Column("budget_cost", Float, nullable=True),
    Column("budget_period", String(8), nullable=True),
    Column("enabled", Boolean, nullable=False),
    Column("metadata", JSON, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("last_used_at", UTCDateTime, nullable=True),
)

usage = Table(
    "usage_records",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("ts", UTCDateTime, nullable=False),
    Column("day", Date, nullable=False),  # UTC day of ts: portable, indexable GROUP BY day
    Column("request_id", String(64), nullable=True),
    Column("key_id", String(40), nullable=True),
    Column("key_name", String(200), nullable=True),
    Column("dialect", String(32), nullable=False),
    Column("requested_model", String(255), nullable=False),
    Column("backend", String(128), nullable=True),
    Column("upstream_model", String(255), nullable=True),
    Column("prompt_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("reasoning_tokens", Integer, nullable=False),
    Column("tokens_estimated", Boolean, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("ttft_ms", Float, nullable=True),
    Column("status", Integer, nullable=False),
    Column("error_type", String(64), nullable=True),
    Column("attempts", Integer, nullable=False),
    Column("cancelled", Boolean, nullable=False),
    Column("cost", Float, nullable=True),
    Index("ix_usage_records_ts", "ts"),
    Index("ix_usage_records_key_id_ts", "key_id", "ts"),
    Index("ix_usage_records_day", "day"),
)

settings = Table(
    "settings",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("value", JSON, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

# Stored Responses API answers (``store: true``): the response object, its request's input items and
# the conversation through it, as JSON; ``owner`` is the SHA-256 of the key that created it.
responses = Table(
    "responses",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("owner", String(64), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("status", String(16), nullable=False),
    Column("background", Boolean, nullable=False),
    Column("body", JSON, nullable=False),
    Column("input_items", JSON, nullable=False),
    Column("history", JSON, nullable=False),
    Index("ix_responses_created_at", "created_at"),
)
