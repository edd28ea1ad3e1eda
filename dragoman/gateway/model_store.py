"""Models added at run time: pulled into a backend (``/api/pull``), deleted again, kept across
restarts in the settings table, and the progress of running pulls for the admin page.

Which backend pulls a name: ``<backend>/<name>`` names it; otherwise ``pull.backend`` from the
config, else ``hf.co/...`` names go to the first llamacpp backend and other names to the first
ollama backend (which forwards the pull).

Several workers or instances share these through the database: every change also writes a new
``models:stamp``, and :meth:`ModelStore.reload` (the settings watcher's) serves what another
one created, copied, pulled or deleted once it sees the stamp change.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from dragoman.core.management import ModelRecipe, PullProgress, PullsModels
from dragoman.errors import ErrorKind, GatewayError
from dragoman.gateway.recipes import check_template

if TYPE_CHECKING:
    from dragoman.backends.base import Backend
    from dragoman.gateway.registry import ModelRegistry
    from dragoman.gateway.settings import SettingsStore

log = logging.getLogger("dragoman.models")

HUB_NAME = re.compile(r"(?:https?://)?(?:hf\.co|huggingface\.co)/", re.IGNORECASE)
PULLED_SETTING = "pulled:"  # + backend name -> that backend's pulled_models()
STAMP_SETTING = "models:stamp"  # new on every change of the models kept here


@dataclass(slots=True)
class RunningPull:
    """A pull in progress, as the admin Models page shows it."""

    name: str
    backend: str
    status: str = "starting"
    total: int | None = None
    completed: int | None = None
    started_at: float = field(default_factory=time.time)


class ModelStore:
    def __init__(self, registry: ModelRegistry, *, pull_backend: str | None = None,
                 blob_root: Callable[[], Path] | None = None) -> None:
        self.registry = registry
        self.pull_backend = pull_backend
        self.settings: SettingsStore | None = None  # set once the database is open
        self.running: dict[str, RunningPull] = {}
        self.recipes = Recipes(registry)
        self._blob_root = blob_root
        self._stamp: object = None  # the stamp of what this process serves
        self._pulled: dict[str, dict[str, dict[str, str]]] = {}  # backend -> its stored pulls, as last seen
        self._saving = asyncio.Lock()

    async def restore(self, settings: SettingsStore) -> None:
        """Serve again what earlier runs pulled and created (called once the database is open)."""
        self.settings = settings
        self._stamp = await settings.get(STAMP_SETTING)
        await self.recipes.restore(settings)
        for backend in self.registry.backends.values():
            if isinstance(backend, PullsModels):
                pulled = await settings.get(PULLED_SETTING + backend.name, {}) or {}
                self._pulled[backend.name] = dict(pulled) if isinstance(pulled, dict) else {}
                if isinstance(pulled, dict) and pulled:
                    backend.restore_models(pulled)
                    log.info("backend %s serves %d pulled model(s) again", backend.name, len(pulled))

    async def rebuilt(self, backend: Backend, old: Backend | None) -> None:
        """A backend rebuilt by an admin edit (before it starts) serves the models pulled into (or
        created for) the one it replaces, as at start-up: those the database keeps, and any the old
        one held that it has not saved yet. What it read is what :meth:`reload` compares with next."""
        if not isinstance(backend, PullsModels):
            return
        pulled = dict(old.pulled_models()) if isinstance(old, PullsModels) and old.type == backend.type else {}
        stored = await self.settings.get(PULLED_SETTING + backend.name, {}) if self.settings is not None else {}
        stored = dict(stored) if isinstance(stored, dict) else {}
        self._pulled[backend.name] = stored
        pulled.update(stored)
        if pulled:
            backend.restore_models(pulled)

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
                    await self._save(backend, model)
                    await self._changed()
                yield progress
        finally:
            if self.running.get(key) is running:
                del self.running[key]

    async def delete(self, name: str) -> None:
        if await self.recipes.remove(name):
            await self._changed()
            return
        backend, model = self.target(name)
        assert isinstance(backend, PullsModels)
        await backend.delete_model(model)
        await self._save(backend, model)
        await self._changed()

    # ------------------------------------------------------------------ create and copy

    async def create(self, recipe: ModelRecipe) -> list[PullProgress]:
        """A model from uploaded GGUF blobs (served by a llamacpp backend) or from another model."""
        if recipe.files:
            return await self._create_from_files(recipe)
        if not recipe.source:
            raise GatewayError(ErrorKind.INVALID_REQUEST, "neither 'from' or 'files' was specified", param="from")
        if recipe.source == recipe.name:
            raise GatewayError(ErrorKind.INVALID_REQUEST, f"model {recipe.name!r} cannot be made from itself",
                               param="from")
        if recipe.template:
            check_template(recipe.template)
        await self.registry.resolve_route(recipe.source)  # a 404 naming close matches if it is unknown
        await self.recipes.put(recipe)
        await self._changed()
        return [PullProgress("using existing layer"), PullProgress("writing manifest"), PullProgress("success")]

    async def _create_from_files(self, recipe: ModelRecipe) -> list[PullProgress]:
        ggufs = [(name, digest) for name, digest in recipe.files if name.lower().endswith(".gguf")]
        if len(ggufs) != 1:
            raise GatewayError(ErrorKind.INVALID_REQUEST, "files must name exactly one .gguf file (split GGUFs and "
                                                          "safetensors are not supported)", param="files")
        filename, digest = ggufs[0]
        path = self.blob_path(digest)
        if not path.is_file():
            raise GatewayError(ErrorKind.INVALID_REQUEST, f"blob {digest} for {filename} not found: upload it "
                                                          f"first with POST /api/blobs/{digest}", param="files")
        backend, model = self._file_backend(recipe.name)
        assert isinstance(backend, PullsModels)
        backend.restore_models({model: {"path": str(path)}})
        await self._save(backend, model)
        await self._changed()
        return [PullProgress("parsing GGUF"), PullProgress(f"using existing layer {digest}"),
                PullProgress("writing manifest"), PullProgress("success")]

    def _file_backend(self, name: str) -> tuple[Backend, str]:
        backends = self.registry.backends
        prefix, sep, rest = name.partition("/")
        if sep and prefix in backends and backends[prefix].type == "llamacpp":
            return backends[prefix], rest
        for backend in backends.values():
            if backend.type == "llamacpp" and isinstance(backend, PullsModels):
                return backend, name
        raise GatewayError(ErrorKind.INVALID_REQUEST, "a model from GGUF files needs a llamacpp backend",
                           param="files")

    async def copy(self, source: str, destination: str) -> None:
        if not destination or not source:
            raise GatewayError(ErrorKind.INVALID_REQUEST, "source and destination are required", param="destination")
        recipe = self.recipes.recipes.get(source)
        if recipe is None:
            await self.registry.resolve_route(source)
            recipe = ModelRecipe(name=destination, source=source)
        await self.recipes.put(dataclasses.replace(recipe, name=destination))
        await self._changed()

    # -------------------------------------------------------------------------- blobs

    def blob_path(self, digest: str) -> Path:
        if self._blob_root is None:
            raise GatewayError(ErrorKind.INVALID_REQUEST, "this gateway keeps no blobs")
        return self._blob_root() / blob_name(digest)

    async def save_blob(self, digest: str, chunks: AsyncIterator[bytes]) -> bool:
        """Store an uploaded blob if its sha256 is ``digest``; False when it was already there."""
        path = self.blob_path(digest)
        if path.is_file():
            async for _ in chunks:  # drain the upload
                pass
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.partial")
        hasher = hashlib.sha256()

        def write(handle: BinaryIO, chunk: bytes) -> None:
            handle.write(chunk)
            hasher.update(chunk)

        try:
            with partial.open("wb") as handle:
                async for chunk in chunks:
                    await asyncio.to_thread(write, handle, chunk)
            actual = f"sha256:{hasher.hexdigest()}"
            if actual != f"sha256:{path.name.removeprefix('sha256-')}":
                raise GatewayError(ErrorKind.INVALID_REQUEST,
                                   f'digest mismatch, expected "{digest}", got "{actual}"', param="digest")
            partial.replace(path)
        except OSError as exc:
            raise GatewayError(ErrorKind.INTERNAL, f"storing blob {digest} failed: {exc.strerror or exc}",
                               status=507 if exc.errno == 28 else 500) from exc
        finally:
            partial.unlink(missing_ok=True)
        return True

    async def _save(self, backend: PullsModels, model: str) -> None:
        """Keep ``model`` as the backend now has it (or not): only that entry of the stored ones,
        which may hold another worker's pulls this one has not seen yet."""
        if self.settings is not None and hasattr(backend, "name"):
            key = PULLED_SETTING + str(backend.name)
            async with self._saving:
                stored = dict(await self.settings.get(key, {}) or {})
                source = backend.pulled_models().get(model)
                if source is None:
                    stored.pop(model, None)
                else:
                    stored[model] = source
                await self.settings.set(key, stored)
                self._pulled[str(backend.name)] = stored

    # ------------------------------------------------------------- several workers

    async def _changed(self) -> None:
        """List the models again, and tell the other workers (a new stamp)."""
        await self.registry.refresh(force=True)
        if self.settings is not None:
            seen, stamp = await self.settings.get(STAMP_SETTING), uuid.uuid4().hex
            await self.settings.set(STAMP_SETTING, stamp)
            # Another worker's change not applied here yet: the next reload looks (this stamp is not ours).
            self._stamp = stamp if seen == self._stamp else None

    async def reload(self) -> bool:
        """Serve what another worker or instance changed since the last look (True if it had):
        its created and copied models, and each backend's pulled ones (added, or deleted here)."""
        if self.settings is None or (stamp := await self.settings.get(STAMP_SETTING)) == self._stamp:
            return False
        self._stamp = stamp
        await self.recipes.restore(self.settings)
        for backend in list(self.registry.backends.values()):
            if isinstance(backend, PullsModels):
                stored = await self.settings.get(PULLED_SETTING + backend.name, {}) or {}
                stored = dict(stored) if isinstance(stored, dict) else {}
                await _follow(backend, stored, self._pulled.get(backend.name, {}))
                self._pulled[backend.name] = stored
        await self.registry.refresh(force=True)
        return True


async def _follow(backend: Backend, stored: dict[str, dict[str, str]], before: dict[str, dict[str, str]]) -> None:
    """Make ``backend`` serve the pulled models as another worker left them: those ``stored`` it
    does not serve (or from elsewhere), without those deleted since ``before`` (a pull of its own
    that is not stored yet stays)."""
    assert isinstance(backend, PullsModels)
    have = backend.pulled_models()
    added = {name: source for name, source in stored.items() if have.get(name) != source}
    if added:
        backend.restore_models(added)
    for name in (before.keys() - stored.keys()) & have.keys():
        try:
            await backend.delete_model(name)  # its file is gone already, or still used by another model
        except GatewayError as exc:
            log.warning("backend %s still serves %s, deleted by another worker: %s", backend.name, name, exc.message)


DERIVED_SETTING = "models:derived"
DIGEST = re.compile(r"sha256[:-]([0-9a-f]{64})")


def blob_name(digest: str) -> str:
    """``sha256:<hex>`` as a blob file name; a 400 for anything else."""
    match = DIGEST.fullmatch(digest)
    if match is None:
        raise GatewayError(ErrorKind.INVALID_REQUEST, f"invalid digest {digest!r}: expected sha256:<64 hex digits>",
                           param="digest")
    return f"sha256-{match.group(1)}"


class Recipes:
    """Models made from others (``/api/create`` with ``from``, ``/api/copy``), kept in the settings
    table and served as aliases with their own system prompt and parameters."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry
        self.settings: SettingsStore | None = None
        self.recipes: dict[str, ModelRecipe] = {}
        self._lock = asyncio.Lock()  # a change is read, made and saved before the next one reads

    async def restore(self, settings: SettingsStore) -> None:
        """Serve the stored recipes (at start, and when another worker changed them)."""
        async with self._lock:
            self.settings = settings
            await self._reread()

    async def _reread(self) -> None:
        """The stored recipes, which another worker may have changed (read before changing them)."""
        if self.settings is not None:
            stored = await self.settings.get(DERIVED_SETTING, {}) or {}
            self.recipes = {name: ModelRecipe.from_json(name, data) for name, data in stored.items()
                            if isinstance(data, dict)}
            self._apply()

    def _apply(self) -> None:
        self.registry.set_derived({name: r.source for name, r in self.recipes.items() if r.source})

    async def _save(self) -> None:
        self._apply()
        if self.settings is not None:
            await self.settings.set(DERIVED_SETTING, {name: r.to_json() for name, r in self.recipes.items()})

    async def put(self, recipe: ModelRecipe) -> None:
        async with self._lock:
            await self._reread()
            if recipe.name not in self.recipes and self.registry.is_taken(recipe.name):
                raise GatewayError(ErrorKind.INVALID_REQUEST, f"model {recipe.name!r} already exists; choose "
                                                              "another name", param="model")
            if recipe.source == recipe.name or (recipe.source and self._reaches(recipe.source, recipe.name)):
                raise GatewayError(ErrorKind.INVALID_REQUEST, f"model {recipe.name!r} cannot be made from itself",
                                   param="from")
            self.recipes[recipe.name] = recipe
            await self._save()

    def _reaches(self, start: str, target: str) -> bool:
        seen, name = set(), start
        while name in self.recipes and name not in seen:
            seen.add(name)
            name = self.recipes[name].source or ""
            if name == target:
                return True
        return False

    async def remove(self, name: str) -> bool:
        async with self._lock:
            await self._reread()
            if self.recipes.pop(name, None) is None:
                return False
            await self._save()
            return True
