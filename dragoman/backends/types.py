"""Backend types by config name, and the one place a backend's config entry is read.

Every type is an entry point of the ``dragoman.backends`` group: the built-ins declare theirs in
dragoman's own pyproject.toml, and an installed package that declares ``x = "pkg.module:Class"``
makes ``type: x`` available in the config file. ``type: python`` names a class directly
(``class: "pkg.module:Class"``, its own settings under ``settings:``). A class is imported on
first use, so an unused backend costs nothing at start.

An entry is validated here with the class's ``Settings`` model, and the class is then built as
``cls(name, settings, deps)``: backends never see raw config. Every problem is an
:class:`EntryError` that names the key at fault, for the config loader and the admin API to place.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dragoman.backends.base import Backend, BackendDeps
from dragoman.core.validation import describe_validation_error

log = logging.getLogger("dragoman")

GROUP = "dragoman.backends"
PYTHON = "python"  # ``type: python``: the entry names its class

# The built-ins, exactly as pyproject.toml declares them. They win over a plugin of the same name,
# and they work without installed metadata (a source checkout on PYTHONPATH, an older install).
BUILT_IN: dict[str, str] = {
    "openai": "dragoman.backends.openai:OpenAIBackend",
    "openai-responses": "dragoman.backends.openai_responses:OpenAIResponsesBackend",
    "echo": "dragoman.backends.echo:EchoBackend",
    "ollama": "dragoman.backends.ollama:OllamaBackend",
    "anthropic": "dragoman.backends.anthropic:AnthropicBackend",
    "llamacpp": "dragoman.backends.llamacpp:LlamaCppBackend",
}


class EntryError(ValueError):
    """A backend entry that cannot be built. ``detail`` starts with the key at fault, relative to
    the entry (``type: ...``, ``settings.depth: ...``), unless ``keyed`` is False: a problem of
    the entry as a whole."""

    def __init__(self, detail: str, *, keyed: bool = True) -> None:
        super().__init__(detail)
        self.detail = detail
        self.keyed = keyed

    def at(self, where: str) -> str:
        """The message placed under ``where`` (``dragoman.yaml: backends[0] (up)``)."""
        return f"{where}.{self.detail}" if self.keyed else f"{where}: {self.detail}"

    @property
    def param(self) -> str:
        """The admin form's field at fault."""
        return "type" if self.detail.startswith(("type:", "class:")) else "settings"


class PythonEntry(BaseModel):
    """A ``type: python`` entry: the class, and its settings as that class's ``Settings`` reads them."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    class_: str = Field(alias="class", pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
    settings: dict[str, Any] = Field(default_factory=dict)


class BackendTypes:
    """Config name -> backend class: ``extra`` (classes given in code, ``create_app(backend_types=)``),
    the built-ins, and the installed entry points (read once, on first use)."""

    def __init__(self, extra: Mapping[str, type[Backend]] | None = None) -> None:
        self._extra = dict(extra or {})
        self._targets: dict[str, str] | None = None

    def targets(self) -> dict[str, str]:
        """Installed type name -> ``module:Class``."""
        if self._targets is None:
            found: dict[str, str] = {}
            for point in entry_points(group=GROUP):
                if point.name == PYTHON or (point.name in BUILT_IN and point.value != BUILT_IN[point.name]):
                    log.warning("ignoring the backend entry point %s = %s: %r is dragoman's own type",
                                point.name, point.value, point.name)
                    continue
                found.setdefault(point.name, point.value)
            self._targets = {**found, **BUILT_IN}
        return self._targets

    def names(self, *, python: bool = True) -> list[str]:
        """Every type a config entry may name (with ``python`` unless told not to)."""
        names = {*self.targets(), *self._extra, *((PYTHON,) if python else ())}
        return sorted(names)

    def load(self, type_name: str) -> type[Backend]:
        """The class of ``type: type_name`` (not ``python``, whose entry names its class)."""
        if type_name in self._extra:
            return self._extra[type_name]
        target = self.targets().get(type_name) if type_name != PYTHON else None
        if target is None:
            raise EntryError(f"type: unknown backend type {type_name!r} (known: {', '.join(self.names())})")
        return load_class(target, "type", type_name)

    def build(self, name: str, type_name: str, settings: Mapping[str, Any], deps: BackendDeps) -> Backend:
        """The backend of one config entry (``settings``: the entry without ``name`` and ``type``)."""
        prefix = ""
        if type_name == PYTHON:
            try:
                entry = PythonEntry.model_validate(settings)
            except ValidationError as exc:
                raise EntryError(describe_validation_error(exc)) from exc
            cls = load_class(entry.class_, "class")
            settings, prefix = entry.settings, "settings"
        else:
            cls = self.load(type_name)
        try:
            parsed = cls.Settings.model_validate(settings)
        except ValidationError as exc:
            raise EntryError(describe_validation_error(exc, prefix)) from exc
        try:
            return cls(name, parsed, deps)
        except ValidationError as exc:
            raise EntryError(describe_validation_error(exc, prefix)) from exc
        except ValueError as exc:
            raise EntryError(str(exc), keyed=False) from exc


def load_class(target: str, key: str, type_name: str | None = None) -> type[Backend]:
    """Import ``module:Class`` and check that it is a backend class; ``key`` is the setting that
    named it (``type`` or ``class``), for the error."""
    module_name, _, attribute = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if exc.name and module_name.startswith(exc.name) and module_name[len(exc.name):][:1] in ("", "."):
            raise EntryError(f"{key}: cannot import {module_name!r} ({exc}); is its package installed?") from exc
        what = f"backend type {type_name!r}" if type_name else repr(target)
        raise EntryError(f"{key}: {what} needs an optional dependency that is not installed ({exc.name}); "
                         "see the README") from exc
    except Exception as exc:  # a plugin's import failed: one line in the error, the traceback logged
        log.error("importing %s failed", module_name, exc_info=exc)
        raise EntryError(f"{key}: importing {module_name!r} failed ({type(exc).__name__}: {exc})") from exc
    found: object = module
    for part in attribute.split("."):
        found = getattr(found, part, None)
        if found is None:
            raise EntryError(f"{key}: module {module_name!r} has no {attribute!r}")
    if not (isinstance(found, type) and issubclass(found, Backend)):
        raise EntryError(f"{key}: {target!r} is not a backend class (a subclass of dragoman.backends.base.Backend)")
    if inspect.isabstract(found):
        missing = ", ".join(sorted(getattr(found, "__abstractmethods__", ())))
        raise EntryError(f"{key}: {target!r} is abstract: it does not implement {missing}")
    if not (isinstance(found.Settings, type) and issubclass(found.Settings, BaseModel)):
        raise EntryError(f"{key}: {target!r}.Settings is not a pydantic model")
    return found
