"""Persistence for keys, usage and settings (SQLAlchemy 2 async + Alembic)."""

from __future__ import annotations

from dragoman.gateway.store.db import Store, normalize_url

__all__ = ["Store", "normalize_url"]
