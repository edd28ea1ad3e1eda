"""Settings the admin UI changes while dragoman runs: aliases, per-model overrides, backends.

Two layers, kept apart. The config file's entries are read afresh on every start and never
copied into the database; the entries made in the admin UI are the database's ``aliases``,
``overrides`` and ``backends`` settings, each a JSON object of name -> value, where ``null``
hides the config file's entry of that name (deleted in the UI). An admin entry of the same name
as the file's replaces it. What runs is the file's entries in the file's order, each replaced or
hidden by the admin entry of its name, then the admin-only entries in the order they were first
made: glob aliases and overrides are tried in that order.

:class:`LiveSettings` is the one owner of changes: every edit is saved and applied by swapping
in a new :class:`~dragoman.gateway.catalog.Catalog` at once; a backend that leaves it is closed
when the requests still using it end. Backend secrets are kept as ``${VAR}`` references or
encrypted, never in clear (:mod:`dragoman.admin.sealing`).

Backends a program passed in code (``create_app(backends=)``) always run and cannot be edited here.
Several workers (``server.workers``) or instances share the database: an edit made through one
reaches the others when they next look (:meth:`LiveSettings.refresh`, every
``server.settings_refresh`` seconds; 2 by default with several workers). The same watcher looks
at the models created, copied, pulled and deleted through another (``ModelStore.reload``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from dragoman.admin.masking import contains_mask, unmask
from dragoman.admin.sealing import SecretBox, keep_references, resealed, resolve, seal, typed_references, unseal
from dragoman.backends.base import Backend, BackendDeps
from dragoman.backends.types import PYTHON, BackendTypes, EntryError
from dragoman.config import BackendEntry, Config, ConfigError, OverrideConfig, describe_validation_error
from dragoman.errors import ErrorKind, GatewayError
from dragoman.extras import missing
from dragoman.gateway.catalog import Catalog, LiveCatalog
from dragoman.gateway.health import HealthMonitor
from dragoman.gateway.logutil import ThrottledLog
from dragoman.gateway.model_store import ModelStore
from dragoman.gateway.settings import SEEDED_PREFIX, SettingsStore
from dragoman.gateway.store import Store

log = logging.getLogger("dragoman.admin")

TEST_TIMEOUT = 15.0
KINDS = ("aliases", "overrides", "backends")


def _invalid(message: str, param: str | None = None) -> GatewayError:
    return GatewayError(ErrorKind.INVALID_REQUEST, message, param=param)


def backend_entries(config: Config) -> dict[str, dict[str, Any]]:
    """The config file's backends as settings values, ``{name: {"type": ..., **settings}}``, in
    edited form: a secret written as ``${VAR}`` keeps its reference (see :mod:`.sealing`)."""
    return {e.name: {"type": e.type, **keep_references(e.settings, config.written_backend(i), config.environ)}
            for i, e in enumerate(config.backends)}


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



@dataclass(slots=True)
class AdminEntries:
    """The admin layer as stored: per kind, name -> value (``None``: the file's entry is hidden).
    Backend values are sealed (:mod:`dragoman.admin.sealing`)."""

    aliases: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)
    backends: dict[str, Any] = field(default_factory=dict)

    def of(self, kind: str) -> dict[str, Any]:
        return dict(getattr(self, kind))


def layered(file: Mapping[str, Any], admin: Mapping[str, Any]) -> dict[str, Any]:
    """The file's entries replaced or hidden by the admin's, then the admin-only ones (see the
    module docstring for the order)."""
    out = {name: admin.get(name, value) for name, value in file.items()}
    out.update((name, value) for name, value in admin.items() if name not in file)
    return {name: value for name, value in out.items() if value is not None}


async def open_admin_entries(store: Store, box: SecretBox) -> tuple[AdminEntries, bool]:
    """The admin layer, after sealing what an older version left in clear and splitting the older
    layout (the file's entries copied into the same rows, ``seeded:<kind>`` remembering which)
    into the admin's own. Returns it and whether stored secrets were resealed (the caller then
    compacts the database, whose free pages still hold the clear values)."""
    settings = SettingsStore(store)
    changed = []
    for row in ("backends", SEEDED_PREFIX + "backends"):
        entries = dict(await settings.get(row, {}) or {})
        redone = {name: resealed(entry, box) if isinstance(entry, dict) else None for name, entry in entries.items()}
        if any(value is not None for value in redone.values()):
            await settings.set(row, {name: redone[name] or entry for name, entry in entries.items()})
            changed.append(row)
    if changed:
        log.warning("backend secrets stored in clear (or with an older key) are now encrypted in %s",
                    " and ".join(changed))
    layers = {}
    for kind in KINDS:
        stored = await settings.get(kind)
        seeded = await settings.get(SEEDED_PREFIX + kind)
        entries = dict(stored or {})
        if seeded is not None:
            entries = _split_seeded(entries, dict(seeded), box if kind == "backends" else None)
        if stored is None or seeded is not None:
            await settings.set(kind, entries)
        if seeded is not None:
            await settings.delete(SEEDED_PREFIX + kind)
        layers[kind] = entries
    return AdminEntries(**layers), bool(changed)


def _split_seeded(current: dict[str, Any], seeded: dict[str, Any], box: SecretBox | None) -> dict[str, Any]:
    """The older layout's admin entries: those that differ from what was seeded from the file,
    and ``None`` for a seeded entry deleted in the admin UI."""
    def clear(value: Any) -> Any:
        return unseal(value, box) if box is not None and isinstance(value, dict) else value

    admin = {name: value for name, value in current.items()
             if name not in seeded or clear(value) != clear(seeded[name])}
    admin.update((name, None) for name in seeded if name not in current)
    return admin


class LiveSettings:
    """The one owner of live changes (see the module docstring): every admin edit of aliases,
    overrides and backends goes through here, is saved, and swaps in a new catalog."""

    def __init__(self, *, config: Config, live: LiveCatalog, entries: Mapping[str, Any], deps: BackendDeps,
                 store: Store, box: SecretBox, health: HealthMonitor | None = None,
                 types: BackendTypes | None = None, given: Sequence[Backend] = (), seen: AdminEntries | None = None,
                 on_change: Callable[[], Awaitable[None]] | None = None, models: ModelStore | None = None) -> None:
        """``given``: the backends a program built in code (``create_app(backends=)``): served, never
        edited here. ``seen``: the admin layer the catalog was built from (what :meth:`refresh`
        compares with). ``on_change``: called after a change (the registry re-lists models).
        ``models``: gives a rebuilt backend the models pulled into the one it replaces."""
        self._config = config
        self._live = live
        self._entries = dict(entries)  # what each backend was built from (edited form), by name
        self._file = self.file_entries(config)
        self._deps = deps
        self._store = store
        self.box = box
        self._health = health
        self._types = types or BackendTypes()
        self._given = {b.name: b for b in given}
        self._seen = seen
        self._on_change = on_change
        self._models = models
        self._lock = asyncio.Lock()
        self._watcher: asyncio.Task[None] | None = None

    # -- the layers ---------------------------------------------------------------------------

    @staticmethod
    def file_entries(config: Config) -> AdminEntries:
        """The config file's layer, in the admin layer's form (backends in edited form)."""
        return AdminEntries(aliases={name: parse_alias_targets(t) for name, t in config.aliases.items()},
                            overrides=override_entries(config), backends=backend_entries(config))

    @staticmethod
    def initial_catalog(config: Config, file_backends: Sequence[Backend], admin: AdminEntries, box: SecretBox,
                        deps: BackendDeps, types: BackendTypes | None = None,
                        given: Sequence[Backend] = ()) -> tuple[Catalog, dict[str, Any]]:
        """What to serve at start, and the entry each backend is built from: the file's backends
        (already built) where the admin layer leaves them as they are, the others built from the
        admin entries (none is started yet)."""
        file = LiveSettings.file_entries(config)
        built = {b.name: b for b in file_backends}
        types = types or BackendTypes()
        backends: list[Backend] = []
        entries = _backend_entries(file, admin, box, report=True)
        given_names = {b.name for b in given}
        for name, entry in entries.items():
            if name in given_names:
                continue
            if entry == file.backends.get(name) and name in built:
                backends.append(built[name])
                continue
            try:
                backends.append(build_backend(name, entry, config, deps, types))
            except GatewayError as exc:
                log.error("backend %s saved in the admin settings cannot be built (%s); fix it on the Settings page",
                          name, exc.message)
                if name in built:  # the file's runs meanwhile (an edit of the entry is tried anew)
                    backends.append(built[name])
        backends += given
        return Catalog.of(backends, _aliases(file, admin), _overrides(file, admin)), entries

    async def _admin(self) -> AdminEntries:
        """The admin layer as the database holds it now (another instance may have changed it)."""
        settings = self._settings()
        return AdminEntries(**{kind: dict(await settings.get(kind, {}) or {}) for kind in KINDS})

    def _settings(self) -> SettingsStore:
        return SettingsStore(self._store)

    async def _apply(self, admin: AdminEntries, kind: str | None) -> None:
        """Save one kind of the admin layer (``None``: saved already, by another worker) and serve
        the result: new backends are built and started first (a bad entry changes nothing when
        saving; when applying another worker's save, it is logged and left out), the old
        catalog's leftovers closed later."""
        file = self._file
        current = self._live.current
        started: list[Backend] = []
        backends: list[Backend] = []
        entries = _backend_entries(file, admin, self.box)
        try:
            for name, entry in entries.items():
                if name in self._given:
                    continue
                if self._entries.get(name) == entry:  # unchanged: the running one (if it could be built)
                    if name in current.backends:
                        backends.append(current.backends[name])
                    continue
                try:
                    backend = build_backend(name, entry, self._config, self._deps, self._types)
                except GatewayError as exc:
                    if kind is not None:
                        raise
                    log.error("backend %s, as saved by another worker, cannot be built here (%s)", name, exc.message)
                    continue
                if self._models is not None:  # it keeps the models pulled into the one it replaces
                    await self._models.rebuilt(backend, current.backends.get(name))
                await backend.start()
                started.append(backend)
                backends.append(backend)
            if kind is not None:
                await self._settings().set(kind, admin.of(kind))
        except BaseException:
            for backend in started:
                await backend.aclose()
            raise
        backends += self._given.values()
        self._live.replace(Catalog.of(backends, _aliases(file, admin), _overrides(file, admin)))
        self._entries = entries
        self._seen = admin
        if self._health is not None:
            for backend in started:
                self._health.forget(backend.name)
        if self._on_change is not None:
            await self._on_change()

    async def refresh(self) -> bool:
        """Apply what another worker or instance saved since the last look; True when the stored
        aliases, overrides or backends had changed. Only backends whose entry changed are rebuilt."""
        async with self._lock:
            admin = await self._admin()
            if admin == self._seen:
                return False
            await self._apply(admin, None)
        return True

    def watch(self, interval: float, *also: tuple[str, Callable[[], Awaitable[bool]]]) -> None:
        """Call :meth:`refresh` every ``interval`` seconds until :meth:`aclose`, and then each of
        ``also``: (what, a refresh that returns True when it applied a change)."""
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._watch(interval, also), name="dragoman-settings-refresh")

    async def _watch(self, interval: float, also: Sequence[tuple[str, Callable[[], Awaitable[bool]]]]) -> None:
        warn = ThrottledLog(log, 60.0)
        refreshes = (("admin settings", self.refresh), *also)
        while True:
            await asyncio.sleep(interval)
            try:
                for what, refresh in refreshes:
                    if await refresh():
                        log.info("applied %s changed by another worker or instance", what)
            except (SQLAlchemyError, OSError, TimeoutError) as exc:
                warn(logging.WARNING, "could not read the admin settings from the database (%s); retrying", exc)
            except GatewayError as exc:  # a stored entry this worker cannot parse: the others stay applied
                warn(logging.ERROR, "the admin settings saved by another worker cannot be applied: %s", exc.message)

    async def aclose(self) -> None:
        """Stop watching (the catalog's owner closes the backends)."""
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None

    # -- aliases and overrides ----------------------------------------------------------------

    async def aliases(self) -> dict[str, list[str]]:
        return {name: list(targets) for name, targets in self._live.current.aliases.items()}

    async def set_alias(self, name: str, targets: Any) -> None:
        name = check_name(name, "an alias name")
        parsed = parse_alias_targets(targets)
        async with self._lock:
            admin = await self._admin()
            _put(admin.aliases, self._file.aliases, name, parsed)
            await self._apply(admin, "aliases")

    async def delete_alias(self, name: str) -> None:
        async with self._lock:
            admin = await self._admin()
            await self._delete(admin, "aliases", name, f"no alias {name!r}")

    async def overrides(self) -> dict[str, Any]:
        return _layered_kind(self._file, await self._admin(), "overrides")

    async def set_override(self, pattern: str, value: Any) -> None:
        pattern = check_name(pattern, "a model name or glob")
        parse_override(pattern, value)
        async with self._lock:
            admin = await self._admin()
            _put(admin.overrides, self._file.overrides, pattern, value)
            await self._apply(admin, "overrides")

    async def delete_override(self, pattern: str) -> None:
        async with self._lock:
            admin = await self._admin()
            await self._delete(admin, "overrides", pattern, f"no override for {pattern!r}")

    async def _delete(self, admin: AdminEntries, kind: str, name: str, missing_message: str) -> None:
        """Delete the admin entry, or hide the file's entry of that name."""
        file = getattr(self._file, kind)
        entries = getattr(admin, kind)
        if name not in _layered_kind(self._file, admin, kind):
            raise GatewayError(ErrorKind.NOT_FOUND, missing_message)
        if name in file:
            entries[name] = None
        else:
            entries.pop(name, None)
        await self._apply(admin, kind)

    # -- backends -----------------------------------------------------------------------------

    async def backend_settings(self) -> dict[str, dict[str, Any]]:
        """Every backend's settings as they run, edited form (secrets in clear: never send these
        to a browser; one that cannot be decrypted is the mask)."""
        return _backend_entries(self._file, await self._admin(), self.box)

    def source(self, name: str, stored: Mapping[str, Any] | None) -> str:
        """``config`` when the backend runs as the config file says, ``admin`` when edited here."""
        return "config" if stored is not None and stored == self._file.backends.get(name) else "admin"

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

    async def save_backend(self, name: str, entry: dict[str, Any], *, create: bool) -> None:
        """Build, start and swap in the backend, then persist it (a bad entry changes nothing)."""
        self._not_given(name)
        async with self._lock:
            admin = await self._admin()
            running = _backend_entries(self._file, admin, self.box)
            if create and (name in running or name in self._live.current.backends):
                raise GatewayError(ErrorKind.INVALID_REQUEST, f"a backend named {name!r} already exists",
                                   status=409, param="name")
            if not create and name not in running and name not in self._live.current.backends:
                raise GatewayError(ErrorKind.NOT_FOUND, f"no backend named {name!r}")
            _put(admin.backends, self._file.backends, name, entry, seal(entry, self.box))
            await self._apply(admin, "backends")

    async def delete_backend(self, name: str) -> None:
        self._not_given(name)
        async with self._lock:
            admin = await self._admin()
            running = _backend_entries(self._file, admin, self.box)
            if name not in running and name not in self._live.current.backends:
                raise GatewayError(ErrorKind.NOT_FOUND, f"no backend named {name!r}")
            if name in self._file.backends:
                admin.backends[name] = None
            else:
                admin.backends.pop(name, None)
            await self._apply(admin, "backends")

    def _not_given(self, name: str) -> None:
        if name in self._given:
            raise _invalid(f"backend {name!r} is built by the program that runs dragoman; change it there", "name")

    async def test_backend(self, name: str, entry: Mapping[str, Any]) -> dict[str, Any]:
        """Build a throwaway instance and ask it for its models; never touches the running one."""
        backend = build_backend(name, entry, self._config, self._deps, self._types)
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


def _put(admin: dict[str, Any], file: Mapping[str, Any], name: str, value: Any, stored: Any = None) -> None:
    """Save ``value`` as the admin's entry; one that says what the file says is no admin entry
    at all (the file's runs again, and follows the file's changes)."""
    if value == file.get(name):
        admin.pop(name, None)
    else:
        admin[name] = value if stored is None else stored


def _layered_kind(file: AdminEntries, admin: AdminEntries, kind: str) -> dict[str, Any]:
    return layered(getattr(file, kind), getattr(admin, kind))


def _backend_entries(file: AdminEntries, admin: AdminEntries, box: SecretBox, *,
                     report: bool = False) -> dict[str, dict[str, Any]]:
    """The backends to run, edited form (the admin's decrypted: a secret that cannot be is the
    mask, and with ``report`` logged)."""
    out = {}
    for name, value in layered(file.backends, admin.backends).items():
        if name in admin.backends:
            problems: list[str] = []
            value = unseal(value, box, problems)
            if problems and report:
                log.error("backend %s: %s cannot be decrypted with this secret key (was DRAGOMAN_SECRET_KEY or "
                          "the key file changed?); type it again on the Settings page", name, ", ".join(problems))
        out[name] = value
    return out


def _aliases(file: AdminEntries, admin: AdminEntries) -> dict[str, list[str]]:
    out = {}
    for name, targets in layered(file.aliases, admin.aliases).items():
        try:
            out[name] = parse_alias_targets(targets)
        except GatewayError as exc:
            log.error("alias %s saved in the admin settings is left out: %s", name, exc.message)
    return out


def _overrides(file: AdminEntries, admin: AdminEntries) -> dict[str, OverrideConfig]:
    out = {}
    for pattern, value in layered(file.overrides, admin.overrides).items():
        try:
            out[pattern] = parse_override(pattern, value)
        except GatewayError as exc:
            log.error("override %s saved in the admin settings is left out: %s", pattern, exc.message)
    return out


def build_backend(name: str, entry: Mapping[str, Any], config: Config, deps: BackendDeps,
                  types: BackendTypes | None = None) -> Backend:
    """A backend from an entry in edited form: references resolved from the environment."""
    if contains_mask(entry):
        raise _invalid(f"backend {name}: a saved secret cannot be decrypted; type it again", "settings")
    try:
        settings = resolve({k: v for k, v in entry.items() if k != "type"}, config.environ)
        backend = (types or BackendTypes()).build(name, str(entry.get("type")), settings, deps)
    except ConfigError as exc:
        raise _invalid(f"backend {name}: {exc}", "settings") from exc
    except EntryError as exc:
        raise _invalid(f"backend {name}: {exc.detail}", exc.param) from exc
    problem = missing(backend.requirements())
    if problem is not None:
        raise _invalid(f"backend {name}: {problem}", "settings")
    return backend
