"""Model management between dialects, gateway and backends: load, unload, pull, delete.

Backends that hold models in memory or fetch them implement the protocols here; the gateway
asks ``isinstance(backend, LoadsModels)`` (they are runtime-checkable), so a backend without a
notion of loading (a hosted API) needs nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@dataclass(slots=True, frozen=True)
class LoadOptions:
    """How to load a model. ``keep_alive``: seconds to stay loaded when idle (``inf``: until
    unloaded; None: the backend's setting). ``n_ctx`` / ``n_threads``: None keeps the model's
    configured value; a different value reloads a loaded model with it."""

    keep_alive: float | None = None
    n_ctx: int | None = None
    n_threads: int | None = None


@dataclass(slots=True, frozen=True)
class PullProgress:
    """One progress line of a pull, as Ollama reports it (``digest`` / ``total`` / ``completed``
    only while downloading a file)."""

    status: str
    digest: str | None = None
    total: int | None = None
    completed: int | None = None


@runtime_checkable
class LoadsModels(Protocol):
    async def load_model(self, model: str, options: LoadOptions) -> float:
        """Load ``model`` now (waiting for a running generation); the unix time it unloads if idle."""
        ...

    async def unload_model(self, model: str) -> None:
        """Free ``model`` now (after a running generation); nothing if it is not loaded."""
        ...


@runtime_checkable
class PullsModels(Protocol):
    def pull_model(self, name: str) -> AsyncIterator[PullProgress]:
        """Fetch ``name`` and make it a model of this backend, reporting progress; raises
        ``GatewayError`` for a name it cannot fetch (before or during the transfer)."""
        ...

    async def delete_model(self, name: str) -> None:
        """Remove a model this backend fetched (``GatewayError(NOT_FOUND)`` for others)."""
        ...

    def pulled_models(self) -> dict[str, dict[str, str]]:
        """The models pulled so far, name -> where from (JSON, kept in the database)."""
        ...

    def restore_models(self, pulled: dict[str, dict[str, str]]) -> None:
        """Serve again the models a previous run pulled (``pulled_models`` of that run)."""
        ...


@dataclass(slots=True, frozen=True)
class ModelRecipe:
    """``POST /api/create``: a model made ``from`` another with its own system prompt, template,
    parameters, licence and leading messages; or from uploaded GGUF ``files`` (name -> sha256)."""

    name: str
    source: str | None = None
    files: tuple[tuple[str, str], ...] = ()
    system: str | None = None
    template: str | None = None
    parameters: tuple[tuple[str, Any], ...] = ()
    license: str | None = None
    messages: tuple[tuple[str, str], ...] = ()  # (role, content)

    def to_json(self) -> dict[str, Any]:
        return {"from": self.source, "system": self.system, "template": self.template,
                "parameters": dict(self.parameters), "license": self.license,
                "messages": [{"role": r, "content": c} for r, c in self.messages]}

    @classmethod
    def from_json(cls, name: str, data: dict[str, Any]) -> ModelRecipe:
        return cls(name=name, source=data.get("from"), system=data.get("system"), template=data.get("template"),
                   parameters=tuple((data.get("parameters") or {}).items()), license=data.get("license"),
                   messages=tuple((m["role"], m["content"]) for m in data.get("messages") or ()))
