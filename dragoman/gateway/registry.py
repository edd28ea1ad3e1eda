"""Which models exist and what a client-facing name means.

Resolution of a name, in order: a ``models:`` entry (several deployments, with fallbacks); an
alias (exact, then glob such as ``claude-sonnet-*``); ``<backend>/<model>``; a bare ``<model>``
served by exactly one backend. Anything else is a 404 that lists close matches. Backend model
lists are cached and refreshed in the background, and refreshed at once on a miss, so new
upstream models appear without restart.

A name resolves to a :class:`~dragoman.gateway.route.Route`: steps tried in order.

* a ``models:`` entry is one step (its deployments, strategy, retries, timeouts), followed by
  the routes of its ``fallbacks`` in order;
* an alias is the routes of its targets in order (an ordered fallback list); a target may be a
  ``models:`` name, another alias or a concrete name;
* a concrete name is a step with one deployment.

Each name appears once in a route (cycles are cut), and a concrete name already reached as a
deployment of an earlier step is not added again. Retries are for when there is nowhere else
to go: a concrete step in a route of several steps is tried once (declare it under ``models:``
to give it retries); alone, it gets the ``routing:`` default.
"""

from __future__ import annotations

import asyncio
import difflib
import fnmatch
import logging
import time
from collections.abc import Iterable

from dragoman.backends.base import Backend
from dragoman.core.models import ModelEntry, ModelInfo
from dragoman.errors import ErrorKind, GatewayError
from dragoman.gateway.route import Deployment, ModelSpec, Route, Step, Target

__all__ = ["ModelRegistry", "Target"]

log = logging.getLogger("dragoman.models")


class ModelRegistry:
    def __init__(self, backends: Iterable[Backend], aliases: dict[str, str | list[str]] | None = None,
                 *, refresh_seconds: float = 60.0, models: Iterable[ModelSpec] = ()) -> None:
        self.backends: dict[str, Backend] = {b.name: b for b in backends}
        self.aliases: dict[str, list[str]] = {}
        self.models: dict[str, ModelSpec] = {}
        self.derived: dict[str, str] = {}  # models created with /api/create or /api/copy -> their source
        self.set_aliases(aliases or {})
        self.set_models(models)
        self.refresh_seconds = refresh_seconds
        self._models: dict[str, dict[str, ModelInfo]] = {}
        self._errors: dict[str, str | None] = {}
        self._refreshed_at = 0.0
        self._lock = asyncio.Lock()
        # Resolved routes by requested name; every change below clears it (resolution is per request).
        self._routes: dict[str, Route] = {}

    def set_aliases(self, aliases: dict[str, str | list[str]]) -> None:
        self.aliases = {name: [t] if isinstance(t, str) else list(t) for name, t in aliases.items()}
        self._routes = {}

    def set_derived(self, derived: dict[str, str]) -> None:
        """Models made from another (``/api/create`` with ``from``): resolved as an alias of it."""
        self.derived = dict(derived)
        self._routes = {}

    def is_taken(self, name: str) -> bool:
        """A ``models:`` entry, alias or backend model already answers to ``name``."""
        return name in self.models or name in self.aliases or self._concrete(name) is not None

    def set_models(self, models: Iterable[ModelSpec]) -> None:
        self.models = {spec.name: spec for spec in models}
        self._routes = {}

    def set_backend(self, backend: Backend) -> None:
        """Add a backend, or replace the one of the same name (admin edits at run time); its
        models are listed again on the next refresh."""
        self.backends[backend.name] = backend
        self._models.pop(backend.name, None)
        self._errors.pop(backend.name, None)
        self._refreshed_at = 0.0
        self._routes = {}

    def remove_backend(self, name: str) -> None:
        self.backends.pop(name, None)
        self._models.pop(name, None)
        self._errors.pop(name, None)
        self._routes = {}

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
            self._routes = {}

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
        """Every ``<backend>/<model>``, then every ``models:`` name and alias that resolves (globs are
        not listed); ``alias_of`` is the first target its route reaches."""
        loaded = {backend: self.backends[backend].loaded_models() for backend in self._models}
        out = [ModelEntry(id=f"{backend}/{name}", backend=backend, info=info, loaded=name in loaded[backend],
                          expires_at=loaded[backend].get(name))
               for backend, models in self._models.items() for name, info in models.items()]
        names = list(self.models) + [a for a in self.aliases if not _is_glob(a) and a not in self.models]
        names += [d for d in self.derived if d not in self.models and d not in self.aliases]
        for name in names:
            route = self._route(name)
            if route is not None:
                first = route.first_target
                out.append(ModelEntry(id=name, backend=first.backend.name, info=first.info, alias_of=first.id))
        return out

    # ------------------------------------------------------------- resolution

    async def resolve_route(self, name: str) -> Route:
        """The steps a request for ``name`` walks through (see the module docstring)."""
        await self.refresh()
        route = self._routes.get(name)
        if route is not None:
            return route
        route = self._route(name)
        if route is None:
            await self.refresh(force=True)  # a model may have appeared upstream
            route = self._route(name)
        if route is None:
            raise self._not_found(name)
        if len(self._routes) < 10_000:  # names come from clients: bound the cache
            self._routes[name] = route
        return route

    def _route(self, name: str) -> Route | None:
        steps: list[tuple[Step, bool]] = []
        self._steps(name, steps, set(), top=True)
        if not steps:
            return None
        if len(steps) > 1:  # concrete steps with somewhere else to go are tried once
            return Route(name, tuple(Step(s.name, s.deployments, s.strategy, 0, s.timeouts) if implicit else s
                                     for s, implicit in steps))
        return Route(name, (steps[0][0],))

    def _steps(self, name: str, out: list[tuple[Step, bool]], seen: set[str], *, top: bool = False) -> None:
        """Append the steps of ``name`` to ``out``; ``seen`` cuts cycles and repeats."""
        if name in seen:
            return
        seen.add(name)
        spec = self.models.get(name)
        if spec is not None:
            deployments = tuple(Deployment(t, d.weight, d.priority)
                                for d in spec.deployments if (t := self._concrete(d.target)) is not None)
            if deployments:
                out.append((Step(name, deployments, spec.strategy, spec.retries, spec.timeouts), False))
                seen.update("\0" + d.id for d in deployments)
            for fallback in spec.fallbacks:
                self._steps(fallback, out, seen)
            return
        alias = self.aliases.get(name)
        if alias is None and name in self.derived:
            alias = [self.derived[name]]
        if alias is None and top:  # globs match requested names, not names inside a route
            alias = next((t for pattern, t in self.aliases.items() if _is_glob(pattern)
                          and fnmatch.fnmatchcase(name, pattern)), None)
        if alias is not None:
            for target_name in alias:
                self._steps(target_name, out, seen)
            return
        target = self._concrete(name)
        if target is not None and "\0" + target.id not in seen:  # reached already, perhaps by another name
            seen.add("\0" + target.id)
            out.append((Step(target.id, (Deployment(target),)), True))

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
        spec = self.models.get(name)
        if spec is not None:
            listed = ", ".join(d.target for d in spec.deployments)
            return GatewayError(ErrorKind.UPSTREAM_UNAVAILABLE,
                                f"model {name!r} is configured, but no backend serves any of its deployments "
                                f"({listed}) or fallbacks right now")
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
