"""Models added at run time: pulled into a backend (``/api/pull``), deleted again, kept across
restarts in the settings table, and the progress of running pulls for the admin page.

Which backend pulls a name: ``<backend>/<name>`` names it; otherwise ``pull.backend`` from the
config, else ``hf.co/...`` names go to the first llamacpp backend and other names to the first
ollama backend (which forwards the pull).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dragoman.core.management import PullProgress, PullsModels
from dragoman.errors import ErrorKind, GatewayError

if TYPE_CHECKING:
    from dragoman.backends.base import Backend
    from dragoman.gateway.registry import ModelRegistry
    from dragoman.gateway.settings import SettingsStore

log = logging.getLogger("dragoman.models")

HUB_NAME = re.compile(r"(?:https?://)?(?:hf\.co|huggingface\.co)/", re.IGNORECASE)
PULLED_SETTING = "pulled:"  # + backend name -> that backend's pulled_models()


@dataclass(slots=True)
class RunningPull:
    """A pull in progress, as the admin Models page shows it."""

    name: str
    backend: str
    status: str = "starting"
    total: int | None = None
    completed: int | None = None
    started_at: float = field(default_factory=time.time)


class ModelCatalog:
    def __init__(self, registry: ModelRegistry, *, pull_backend: str | None = None) -> None:
        self.registry = registry
        self.pull_backend = pull_backend
        self.settings: SettingsStore | None = None  # set once the database is open
        self.running: dict[str, RunningPull] = {}

    async def restore(self, settings: SettingsStore) -> None:
        """Serve again what earlier runs pulled (called once the database is open)."""
        self.settings = settings
        for backend in self.registry.backends.values():
            if isinstance(backend, PullsModels):
                pulled = await settings.get(PULLED_SETTING + backend.name, {}) or {}
                if isinstance(pulled, dict) and pulled:
                    backend.restore_models(pulled)
                    log.info("backend %s serves %d pulled model(s) again", backend.name, len(pulled))

    def target(self, name: str) -> tuple[Backend, str]:
        """The backend that pulls (or deletes) ``name``, and the name as that backend knows it."""
        if not name or not name.strip():
            raise GatewayError(ErrorKind.INVALID_REQUEST, "model is required", param="model")
        backends = self.registry.backends
        prefix, sep, rest = name.partition("/")
        if sep and prefix in backends:
            return self._puller(backends[prefix], rest), rest
        if self.pull_backend is not None:
            backend = backends.get(self.pull_backend)
            if backend is None:
                raise GatewayError(ErrorKind.INVALID_REQUEST, f"pull.backend names {self.pull_backend!r}, "
                                                              "which is not a backend", param="model")
            return self._puller(backend, name), name
        kind = "llamacpp" if HUB_NAME.match(name) else "ollama"
        for backend in backends.values():
            if backend.type == kind and isinstance(backend, PullsModels):
                return backend, name
        raise GatewayError(ErrorKind.INVALID_REQUEST,
                           f"no backend can pull {name!r}: add a {kind} backend, name one as <backend>/{name}, "
                           "or set pull.backend", param="model")

    def _puller(self, backend: Backend, name: str) -> Backend:
        if not isinstance(backend, PullsModels):
            raise GatewayError(ErrorKind.INVALID_REQUEST, f"backend {backend.name!r} ({backend.type}) cannot pull "
                                                          f"or delete models ({name!r})", param="model")
        return backend

    async def pull(self, name: str) -> AsyncIterator[PullProgress]:
        """Pull ``name`` with progress; the model is listed (and kept) once ``success`` is sent."""
        backend, model = self.target(name)
        assert isinstance(backend, PullsModels)
        key = f"{backend.name}/{model}"
        running = self.running.setdefault(key, RunningPull(model, backend.name))
        try:
            async for progress in backend.pull_model(model):
                running.status, running.total, running.completed = progress.status, progress.total, progress.completed
                if progress.status == "success":
                    await self._save(backend)
                    await self.registry.refresh(force=True)
                yield progress
        finally:
            if self.running.get(key) is running:
                del self.running[key]

    async def delete(self, name: str) -> None:
        backend, model = self.target(name)
        assert isinstance(backend, PullsModels)
        await backend.delete_model(model)
        await self._save(backend)
        await self.registry.refresh(force=True)

    async def _save(self, backend: PullsModels) -> None:
        if self.settings is not None and hasattr(backend, "name"):
            await self.settings.set(PULLED_SETTING + str(backend.name), backend.pulled_models())
