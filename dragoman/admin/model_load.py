"""``POST /admin/api/models/load`` and ``/unload``: text-generation-webui's model load API, for
local models (``dragoman models load|unload`` calls these)."""

from __future__ import annotations

from typing import Any

from dragoman.core.duration import parse_duration
from dragoman.core.management import LoadOptions
from dragoman.core.service import CallContext
from dragoman.errors import invalid_request
from dragoman.gateway.principal import Principal

LOAD_FIELDS = ("model", "keep_alive", "n_ctx", "n_threads")


def admin_context() -> CallContext:
    """The admin acts as a caller that may use every model."""
    return CallContext(dialect="admin", principal=Principal.anonymous())


def model_name(data: dict[str, Any]) -> str:
    name = data.get("model")
    if not isinstance(name, str) or not name:
        raise invalid_request("model is required (a name as clients use it, e.g. local/gemma3:270m)", "model")
    return name


def load_options(data: dict[str, Any]) -> LoadOptions:
    """The body's settings: ``keep_alive`` (seconds or "5m", -1 forever), ``n_ctx``, ``n_threads``."""
    unknown = sorted(set(data) - set(LOAD_FIELDS))
    if unknown:
        raise invalid_request(f"unknown field(s): {', '.join(unknown)} (known: {', '.join(LOAD_FIELDS)})", unknown[0])
    keep_alive = None
    if data.get("keep_alive") is not None:
        try:
            keep_alive = parse_duration(data["keep_alive"])
        except ValueError as exc:
            raise invalid_request(str(exc), "keep_alive") from exc
    return LoadOptions(keep_alive=keep_alive, n_ctx=_count(data, "n_ctx", 64), n_threads=_count(data, "n_threads", 1))


def _count(data: dict[str, Any], name: str, low: int) -> int | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise invalid_request(f"{name} must be an integer of at least {low}", name)
    return value
