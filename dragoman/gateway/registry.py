"""Which models exist and what a client-facing name means.

Resolution of a name, in order: an alias (exact, then glob such as ``claude-sonnet-*``);
``<backend>/<model>``; a bare ``<model>`` served by exactly one backend. Anything else is a
404 that lists close matches. Backend model lists are cached and refreshed in the
background, and refreshed at once on a miss, so new upstream models appear without restart.
"""

from __future__ import annotations

import asyncio
import difflib
import fnmatch
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

from dragoman.backends.base import Backend
from dragoman.core.models import ModelEntry, ModelInfo
from dragoman.errors import ErrorKind, GatewayError

log = logging.getLogger("dragoman.models")


@dataclass(slots=True, frozen=True)
class Target:
    """One concrete place a request can go."""

    backend: Backend
    model: str  # upstream name
    info: ModelInfo

    @property
    def id(self) -> str:
        return f"{self.backend.name}/{self.model}"


class ModelRegistry:
    def __init__(self, backends: Iterable[Backend], aliases: dict[str, str | list[str]] | None = None,
                 *, refresh_seconds: float = 60.0) -> None:
        self.backends: dict[str, Backend] = {b.name: b for b in backends}
        self.aliases: dict[str, list[str]] = {}
        self.set_aliases(aliases or {})
        self.refresh_seconds = refresh_seconds
        self._models: dict[str, dict[str, ModelInfo]] = {}
        self._errors: dict[str, str | None] = {}
        self._refreshed_at = 0.0
        self._lock = asyncio.Lock()

    def set_aliases(self, aliases: dict[str, str | list[str]]) -> None:
        self.aliases = {name: [t] if isinstance(t, str) else list(t) for name, t in aliases.items()}

    # ---------------------------------------------------------------- refresh

    async def refresh(self, *, force: bool = False) -> None:
        if not force and time.monotonic() - self._refreshed_at < self.refresh_seconds:
            return
        async with self._lock:
            if not force and time.monotonic() - self._refreshed_at < self.refresh_seconds:
                return
            results = await asyncio.gather(*(self._list(b) for b in self.backends.values()))
            for backend, models in zip(self.backends.values(), results, strict=True):
                if models is not None:
                    self._models[backend.name] = {m.name: m for m in models}
            self._refreshed_at = time.monotonic()

    async def _list(self, backend: Backend) -> list[ModelInfo] | None:
        try:
            models = await backend.list_models()
        except GatewayError as exc:
            self._errors[backend.name] = exc.message
            log.warning("listing models of backend %s failed: %s", backend.name, exc.message)
            return None
        self._errors[backend.name] = None
        return models

    def backend_error(self, name: str) -> str | None:
        return self._errors.get(name)

    def model_count(self, name: str) -> int:
        return len(self._models.get(name, {}))

    # ---------------------------------------------------------------- listing

    def entries(self) -> list[ModelEntry]:
        """Every ``<backend>/<model>``, then every alias that resolves (globs are not listed)."""
        out = [ModelEntry(id=f"{backend}/{name}", backend=backend, info=info)
               for backend, models in self._models.items() for name, info in models.items()]
        for alias, targets in self.aliases.items():
            if _is_glob(alias):
                continue
            first = self._concrete(targets[0]) if targets else None
            if first is not None:
                out.append(ModelEntry(id=alias, backend=first.backend.name, info=first.info,
                                      alias_of=first.id))
        return out

    # ------------------------------------------------------------- resolution

    async def resolve(self, name: str) -> list[Target]:
        """Targets for a client-facing name, in fallback order."""
        await self.refresh()
        targets = self._resolve(name)
        if targets is None:
            await self.refresh(force=True)  # a model may have appeared upstream
            targets = self._resolve(name)
        if not targets:
            raise self._not_found(name)
        return targets

    def _resolve(self, name: str) -> list[Target] | None:
        alias = self.aliases.get(name)
        if alias is None:
            alias = next((t for pattern, t in self.aliases.items() if _is_glob(pattern)
                          and fnmatch.fnmatchcase(name, pattern)), None)
        if alias is not None:
            found = [t for t in (self._concrete(a) for a in alias) if t is not None]
            return found or None
        target = self._concrete(name)
        return [target] if target else None

    def _concrete(self, name: str) -> Target | None:
        backend_name, sep, model = name.partition("/")
        if sep and backend_name in self.backends:
            info = self._models.get(backend_name, {}).get(model)
            if info is not None:
                return Target(self.backends[backend_name], model, info)
        matches = [(b, models[name]) for b, models in self._models.items() if name in models]
        if len(matches) == 1:
            backend, info = matches[0]
            return Target(self.backends[backend], name, info)
        if not matches and ":" not in name:  # Ollama clients may drop or add ":latest"
            return self._concrete(f"{name}:latest") if not name.endswith(":latest") else None
        return None

    def _not_found(self, name: str) -> GatewayError:
        known = [e.id for e in self.entries()]
        bare = [m for models in self._models.values() for m in models]
        ambiguous = sum(1 for models in self._models.values() if name in models) > 1
        if ambiguous:
            options = [f"{b}/{name}" for b, models in self._models.items() if name in models]
            return GatewayError(ErrorKind.NOT_FOUND,
                                f"model {name!r} is served by several backends; use one of: {', '.join(options)}",
                                code="model_not_found", param="model")
        close = difflib.get_close_matches(name, known + bare, n=5, cutoff=0.4)
        hint = f" Close matches: {', '.join(close)}." if close else ""
        listing = ", ".join(known[:20]) + (" ..." if len(known) > 20 else "")
        return GatewayError(ErrorKind.NOT_FOUND,
                            f"model {name!r} not found.{hint} Available models: {listing or '(none)'}",
                            code="model_not_found", param="model")


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")
