"""Settings the admin UI changes while dragoman runs: aliases, per-model overrides, backends.

The config file seeds the ``aliases``, ``overrides`` and ``backends`` settings
(:func:`dragoman.gateway.settings.seed_settings`); from then on the database holds the truth,
and every edit is saved there and applied to the running gateway at once. Backend secrets are
kept there as ``${VAR}`` references or encrypted, never in clear (:mod:`dragoman.admin.sealing`).

* aliases go to the registry, overrides to the gateway (both are plain replaceable maps);
* a backend is rebuilt from its new settings, started, and swapped into the registry. The old
  instance is not closed at once, because requests may still be streaming through it; backends
  built here are closed at shutdown (the lifespan closes the ones the app built).

Several workers (``server.workers``) or instances share the database: an edit made through one
reaches the others when they next look (:meth:`LiveSettings.refresh`, every
``server.settings_refresh`` seconds; 2 by default with several workers).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Collection, Mapping
from typing import Any

from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from dragoman.admin.masking import contains_mask, unmask
from dragoman.admin.sealing import SecretBox, keep_references, resealed, resolve, seal, typed_references, unseal
from dragoman.backends.base import Backend, BackendDeps
from dragoman.backends.registry import PYTHON, BackendTypes, EntryError
from dragoman.config import BackendEntry, Config, ConfigError, OverrideConfig, describe_validation_error
from dragoman.errors import ErrorKind, GatewayError
from dragoman.extras import missing
from dragoman.gateway.health import HealthMonitor
from dragoman.gateway.logutil import ThrottledLog
from dragoman.gateway.registry import ModelRegistry
from dragoman.gateway.settings import SEEDED_PREFIX, SettingsStore, seed_settings
from dragoman.gateway.store import Store
from dragoman.pipeline import Gateway

log = logging.getLogger("dragoman.admin")

TEST_TIMEOUT = 15.0
LIVE_ROWS = ("aliases", "overrides", "backends")  # the settings rows applied to the running gateway


def _invalid(message: str, param: str | None = None) -> GatewayError:
    return GatewayError(ErrorKind.INVALID_REQUEST, message, param=param)


def backend_entries(config: Config) -> dict[str, dict[str, Any]]:
    """The config file's backends as settings values, ``{name: {"type": ..., **settings}}``, in
    edited form: a secret written as ``${VAR}`` keeps its reference (see :mod:`.sealing`)."""
    return {e.name: {"type": e.type, **keep_references(e.settings, config.written_backend(i), config.environ)}
            for i, e in enumerate(config.backends)}


class SealedEntries:
    """Backend entries as the database keeps them: secrets sealed (the seeding's codec)."""

    def __init__(self, box: SecretBox) -> None:
        self._box = box

    def encode(self, value: Any) -> Any:
        return seal(value, self._box) if isinstance(value, dict) else value

    def decode(self, value: Any) -> Any:
        return unseal(value, self._box) if isinstance(value, dict) else value


def override_entries(config: Config) -> dict[str, dict[str, Any]]:
    return {pattern: o.model_dump(exclude_none=True) for pattern, o in config.overrides.items()}


def parse_override(pattern: str, value: Any) -> OverrideConfig:
    if not isinstance(value, dict):
        raise _invalid(f"the override for {pattern!r} must be a JSON object", "override")
    try:
        return OverrideConfig.model_validate(value)
    except ValidationError as exc:
        raise _invalid(f"override {pattern!r}: {describe_validation_error(exc)}", "override") from exc


def parse_alias_targets(value: Any) -> list[str]:
    targets = [value] if isinstance(value, str) else value
    if (not isinstance(targets, list) or not targets
            or not all(isinstance(t, str) and t.strip() for t in targets)):
        raise _invalid("targets must be a non-empty list of model names", "targets")
    return [t.strip() for t in targets]


def check_name(name: str, what: str) -> str:
    name = name.strip()
    if not name or len(name) > 200:
        raise _invalid(f"{what} must be 1 to 200 characters", "name")
    return name


class LiveSettings:
    """Owns the runtime copies of aliases, overrides and backends (see the module docstring)."""

    def __init__(self, *, config: Config, registry: ModelRegistry, gateway: Gateway, backends: list[Backend],
                 deps: BackendDeps, store: Callable[[], Store], health: HealthMonitor | None = None,
                 types: BackendTypes | None = None, given: Collection[str] = ()) -> None:
        """``given``: the names of backends a program passed in code (``create_app(backends=)``): no
        setting of them is stored, and the admin UI cannot change them."""
        self._config = config
        self._registry = registry
        self._gateway = gateway
        self._backends = backends  # the app's list (the CLI banner and shutdown read it)
        self._deps = deps
        self._types = types or BackendTypes()
        self._given = frozenset(given)
        self._store = store
        self._health = health
        self._from_file = backend_entries(config)
        self._owned: list[Backend] = []  # built here: closed at shutdown
        self._lock = asyncio.Lock()
        self._box: SecretBox | None = None  # set by load()
        self._seen: dict[str, Any] | None = None  # the LIVE_ROWS as last applied (refresh compares)
        self._applied: dict[str, Mapping[str, Any]] = {}  # backend name -> the entry it runs with
        self._watcher: asyncio.Task[None] | None = None

    # -- start and stop -----------------------------------------------------------------------

    async def load(self, box: SecretBox) -> bool:
        """Seal what an older version left in clear, seed from the config file, then apply what
        the database holds (edits made earlier). ``box`` keeps the backend secrets at rest.
        Returns True when stored secrets were resealed (the caller compacts the database)."""
        self._box = box
        rows = await self._reseal()
        if rows:
            log.warning("backend secrets stored in clear (or with an older key) are now encrypted in %s",
                        " and ".join(rows))
        await seed_settings(self._store(), self._config.aliases, override_entries(self._config),
                            backends=self._from_file, backends_codec=SealedEntries(box))
        store = self._settings()
        aliases = await store.get("aliases", {}) or {}
        self._registry.set_aliases({k: parse_alias_targets(v) for k, v in aliases.items()})
        overrides = await store.get("overrides", {}) or {}
        self._gateway.overrides = {k: parse_override(k, v) for k, v in overrides.items()}
        wanted = await store.get("backends", {}) or {}
        for name in list(self._registry.backends):
            if name not in wanted and name not in self._given:
                self._remove(name)
        for name, stored in wanted.items():
            problems: list[str] = []
            entry = unseal(stored, box, problems)
            if problems:
                log.error("backend %s: %s cannot be decrypted with this secret key (was DRAGOMAN_SECRET_KEY or "
                          "the key file changed?); type it again on the Settings page", name, ", ".join(problems))
            self._applied[name] = entry
            if entry != self._from_file.get(name):
                try:
                    await self._swap(self._build(name, entry))
                except GatewayError as exc:
                    log.error("backend %s saved in the admin settings cannot be built (%s); "
                              "fix it on the Settings page", name, exc.message)
        self._seen = await self._live_rows()
        return bool(rows)

    async def _live_rows(self) -> dict[str, Any]:
        stored = await self._settings().all()
        return {name: stored.get(name) for name in LIVE_ROWS}

    async def refresh(self) -> bool:
        """Apply what another worker or instance saved since the last look; True when the stored
        aliases, overrides or backends had changed. Only backends whose entry changed are rebuilt."""
        async with self._lock:
            rows = await self._live_rows()
            if rows == self._seen:
                return False
            self._seen = rows
            aliases, overrides = rows["aliases"] or {}, rows["overrides"] or {}
            self._registry.set_aliases({k: parse_alias_targets(v) for k, v in aliases.items()})
            self._gateway.overrides = {k: parse_override(k, v) for k, v in overrides.items()}
            wanted = rows["backends"] or {}
            changed = False
            for name in list(self._registry.backends):
                if name not in wanted:
                    self._remove(name)
                    self._applied.pop(name, None)
                    changed = True
            for name, stored in wanted.items():
                entry = unseal(stored, self.box)
                if entry == self._applied.get(name):
                    continue
                self._applied[name] = entry
                changed = True
                try:
                    await self._swap(self._build(name, entry))
                except GatewayError as exc:
                    log.error("backend %s, as saved by another worker, cannot be built here (%s)", name, exc.message)
        if changed:
            await self._registry.refresh(force=True)
        return True

    def watch(self, interval: float) -> None:
        """Call :meth:`refresh` every ``interval`` seconds until :meth:`aclose`."""
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._watch(interval), name="dragoman-settings-refresh")

    async def _watch(self, interval: float) -> None:
        warn = ThrottledLog(log, 60.0)
        while True:
            await asyncio.sleep(interval)
            try:
                if await self.refresh():
                    log.info("applied admin settings changed by another worker or instance")
            except (SQLAlchemyError, OSError, TimeoutError) as exc:
                warn(logging.WARNING, "could not read the admin settings from the database (%s); retrying", exc)
            except GatewayError as exc:  # a stored entry this worker cannot parse: the others stay applied
                warn(logging.ERROR, "the admin settings saved by another worker cannot be applied: %s", exc.message)

    async def _reseal(self) -> list[str]:
        """Encrypt clear secrets (and re-encrypt ones sealed with an older key) in the stored rows;
        the names of the rows changed."""
        changed = []
        async with self._lock:
            for row in ("backends", SEEDED_PREFIX + "backends"):
                entries = dict(await self._settings().get(row, {}) or {})
                redone = {name: resealed(entry, self.box) if isinstance(entry, dict) else None
                          for name, entry in entries.items()}
                if any(value is not None for value in redone.values()):
                    await self._settings().set(row, {name: redone[name] or entry for name, entry in entries.items()})
                    changed.append(row)
        return changed

    @property
    def box(self) -> SecretBox:
        if self._box is None:
            raise GatewayError(ErrorKind.INTERNAL, "the admin settings are not loaded yet", status=503,
                               retry_after=1)
        return self._box

    def _settings(self) -> SettingsStore:
        return SettingsStore(self._store())

    async def aclose(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        for backend in reversed(self._owned):
            try:
                await backend.aclose()
            except Exception:
                log.exception("closing backend %s failed", backend.name)
        self._owned.clear()

    # -- aliases and overrides ----------------------------------------------------------------

    async def aliases(self) -> dict[str, list[str]]:
        raw = await self._settings().get("aliases", {}) or {}
        return {k: parse_alias_targets(v) for k, v in raw.items()}

    async def set_alias(self, name: str, targets: Any) -> None:
        name = check_name(name, "an alias name")
        parsed = parse_alias_targets(targets)
        async with self._lock:
            current = await self.aliases()
            current[name] = parsed
            await self._settings().set("aliases", current)
            self._registry.set_aliases(dict(current))

    async def delete_alias(self, name: str) -> None:
        async with self._lock:
            current = await self.aliases()
            if current.pop(name, None) is None:
                raise GatewayError(ErrorKind.NOT_FOUND, f"no alias {name!r}")
            await self._settings().set("aliases", current)
            self._registry.set_aliases(dict(current))

    async def overrides(self) -> dict[str, Any]:
        return dict(await self._settings().get("overrides", {}) or {})

    async def set_override(self, pattern: str, value: Any) -> None:
        pattern = check_name(pattern, "a model name or glob")
        parsed = parse_override(pattern, value)
        async with self._lock:
            current = await self.overrides()
            current[pattern] = value
            await self._settings().set("overrides", current)
            live = dict(self._gateway.overrides)
            live[pattern] = parsed
            self._gateway.overrides = live

    async def delete_override(self, pattern: str) -> None:
        async with self._lock:
            current = await self.overrides()
            if current.pop(pattern, None) is None:
                raise GatewayError(ErrorKind.NOT_FOUND, f"no override for {pattern!r}")
            await self._settings().set("overrides", current)
            live = dict(self._gateway.overrides)
            live.pop(pattern, None)
            self._gateway.overrides = live

    # -- backends -----------------------------------------------------------------------------

    async def backend_settings(self) -> dict[str, dict[str, Any]]:
        """Every backend's stored settings, edited form (secrets in clear: never send these to a
        browser; one that cannot be decrypted is the mask)."""
        stored = await self._settings().get("backends", {}) or {}
        return {name: unseal(entry, self.box) for name, entry in stored.items()}

    async def _store_backend(self, name: str, entry: dict[str, Any] | None) -> None:
        """Save (sealed) or, with None, delete one backend entry; the others stay as stored."""
        stored = dict(await self._settings().get("backends", {}) or {})
        if entry is None:
            stored.pop(name, None)
        else:
            stored[name] = seal(entry, self.box)
        await self._settings().set("backends", stored)

    def source(self, name: str, stored: Mapping[str, Any] | None) -> str:
        """``config`` when the backend runs as the config file says, ``admin`` when edited here."""
        return "config" if stored is not None and stored == self._from_file.get(name) else "admin"

    def prepare(self, name: str, entry: Any, old: Mapping[str, Any] | None) -> dict[str, Any]:
        """Validate an entry sent by the browser and restore the masked secrets from ``old``."""
        if not isinstance(entry, dict):
            raise _invalid("a backend is a JSON object with type and settings", "settings")
        kind = entry.get("type")
        known = self._types.names()
        if not isinstance(kind, str) or kind not in known:
            raise _invalid(f"type must be one of {', '.join(known)}", "type")
        settings = entry.get("settings", {})
        if not isinstance(settings, dict):
            raise _invalid("settings must be a JSON object", "settings")
        if "name" in settings or "type" in settings:
            raise _invalid("name and type are set outside settings", "settings")
        previous = {k: v for k, v in (old or {}).items() if k != "type"}
        restored = unmask(settings, previous)
        if contains_mask(restored):
            raise _invalid("a secret is still masked (••••): type the secret itself", "settings")
        typed = typed_references(restored, previous)
        if typed:
            raise _invalid(f"{typed[0]}: environment references (${{...}}) can only be written in the config file",
                           "settings")
        if kind == PYTHON and (old is None or old.get("type") != PYTHON or restored.get("class") != old.get("class")):
            # Importing a module named in a browser would run code the operator never chose.
            raise _invalid("a type python backend's class can only be set in the config file", "type")
        try:
            BackendEntry.model_validate({"name": name, "type": kind})
        except ValidationError as exc:
            raise _invalid(f"invalid backend name: {describe_validation_error(exc)}", "name") from exc
        return {"type": kind, **restored}

    def _build(self, name: str, entry: Mapping[str, Any]) -> Backend:
        """A backend from an edited entry: references resolved from the environment."""
        if contains_mask(entry):
            raise _invalid(f"backend {name}: a saved secret cannot be decrypted; type it again", "settings")
        try:
            settings = resolve({k: v for k, v in entry.items() if k != "type"}, self._config.environ)
            backend = self._types.build(name, str(entry.get("type")), settings, self._deps)
        except ConfigError as exc:
            raise _invalid(f"backend {name}: {exc}", "settings") from exc
        except EntryError as exc:
            raise _invalid(f"backend {name}: {exc.detail}", exc.param) from exc
        problem = missing(backend.requirements())
        if problem is not None:
            raise _invalid(f"backend {name}: {problem}", "settings")
        return backend

    async def save_backend(self, name: str, entry: dict[str, Any], *, create: bool) -> None:
        """Build, start and swap in the backend, then persist it (a bad entry changes nothing)."""
        self._not_given(name)
        async with self._lock:
            stored = await self.backend_settings()
            if create and (name in stored or name in self._registry.backends):
                raise GatewayError(ErrorKind.INVALID_REQUEST, f"a backend named {name!r} already exists",
                                   status=409, param="name")
            if not create and name not in stored and name not in self._registry.backends:
                raise GatewayError(ErrorKind.NOT_FOUND, f"no backend named {name!r}")
            backend = self._build(name, entry)
            await self._swap(backend)
            await self._store_backend(name, entry)
            self._applied[name] = entry
        await self._registry.refresh(force=True)

    async def delete_backend(self, name: str) -> None:
        self._not_given(name)
        async with self._lock:
            stored = await self.backend_settings()
            if name not in stored and name not in self._registry.backends:
                raise GatewayError(ErrorKind.NOT_FOUND, f"no backend named {name!r}")
            await self._store_backend(name, None)
            self._remove(name)
            self._applied.pop(name, None)

    def _not_given(self, name: str) -> None:
        if name in self._given:
            raise _invalid(f"backend {name!r} is built by the program that runs dragoman; change it there", "name")

    async def test_backend(self, name: str, entry: Mapping[str, Any]) -> dict[str, Any]:
        """Build a throwaway instance and ask it for its models; never touches the running one."""
        backend = self._build(name, entry)
        try:
            async with asyncio.timeout(TEST_TIMEOUT):
                await backend.start()
                problem = await backend.health()
                models = [m.name for m in await backend.list_models()]
        except GatewayError as exc:
            return {"ok": False, "error": exc.message, "models": []}
        except TimeoutError:
            return {"ok": False, "error": f"no answer within {TEST_TIMEOUT:.0f}s", "models": []}
        finally:
            await backend.aclose()
        if problem:
            return {"ok": False, "error": problem, "models": models}
        return {"ok": True, "error": None, "models": models}

    async def _swap(self, backend: Backend) -> None:
        await backend.start()
        old = self._registry.backends.get(backend.name)
        self._registry.set_backend(backend)
        self._owned.append(backend)
        for listing in (self._backends, self._health.backends if self._health else None):
            if listing is None:
                continue
            if old is not None and old in listing:
                listing[listing.index(old)] = backend
            else:
                listing.append(backend)
        if self._health is not None:
            self._health.results.pop(backend.name, None)  # the next check reports on the new instance

    def _remove(self, name: str) -> None:
        old = self._registry.backends.get(name)
        self._registry.remove_backend(name)
        for listing in (self._backends, self._health.backends if self._health else None):
            if listing is not None and old is not None and old in listing:
                listing.remove(old)
        if self._health is not None:
            self._health.results.pop(name, None)
