"""The admin web UI and its JSON API, served by dragoman itself under ``/admin``."""

from __future__ import annotations

from dragoman.admin.routes import admin_routes

__all__ = ["admin_routes"]
