"""Which models exist and what a client-facing name means.

Resolution of a name, in order: a ``models:`` entry (several deployments, with fallbacks); an
alias (exact, then glob such as ``claude-sonnet-*``); ``<backend>/<model>``; a bare ``<model>``
served by exactly one backend. Anything else is a 404 that lists close matches. Backend model
lists are cached and refreshed in the background, and refreshed at once on a miss, so new
upstream models appear without restart.

A name resolves to a :class:`~dragoman.gateway.deployments.ModelRoute`: steps tried in order.

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
from collections.abc import Iterable, Mapping

from dragoman.backends.base import Backend
from dragoman.core.models import ModelEntry, ModelInfo
from dragoman.errors import ErrorKind, GatewayError
from dragoman.gateway.catalog import Catalog, LiveCatalog
from dragoman.gateway.deployments import Deployment, ModelRoute, ModelSpec, Step, Target

__all__ = ["ModelRegistry", "Target"]

log = logging.getLogger("dragoman.models")


class ModelRegistry:
    """Resolves names against the :class:`LiveCatalog`'s current catalog (or the one a request
    pinned), with the backends' model lists cached here."""

    def __init__(self, live: LiveCatalog, *, refresh_seconds: float = 60.0, models: Iterable[ModelSpec] = ()) -> None:
        self.live = live
        self.models: dict[str, ModelSpec] = {spec.name: spec for spec in models}
        self.derived: dict[str, str] = {}  # models created with /api/create or /api/copy -> their source
        self.refresh_seconds = refresh_seconds
        self._models: dict[str, dict[str, ModelInfo]] = {}
        self._listed: dict[str, Backend] = {}  # which instance each model list came from
        self._errors: dict[str, str | None] = {}
        self._refreshed_at = 0.0
        self._refreshed_for: Catalog | None = None
        self._lock = asyncio.Lock()
        # Resolved routes by requested name, for one catalog and one set of model lists (resolution
        # is per request); a new catalog or a refresh starts it afresh.
        self._routes: dict[str, ModelRoute] = {}
        self._routes_for: Catalog | None = None

    @property
    def backends(self) -> Mapping[str, Backend]:
        return self.live.current.backends

    def set_derived(self, derived: dict[str, str]) -> None:
        """Models made from another (``/api/create`` with ``from``): resolved as an alias of it."""
        self.derived = dict(derived)
        self._routes = {}

    def is_taken(self, name: str) -> bool:
        """A ``models:`` entry, alias or backend model already answers to ``name``."""
        return name in self.models or name in self.aliases or self._concrete(name, self.live.current) is not None

    @property
    def aliases(self) -> Mapping[str, tuple[str, ...]]:
        return self.live.current.aliases

    # ---------------------------------------------------------------- refresh

    async def refresh(self, *, force: bool = False) -> None:
        """List the backends' models again when the lists are older than ``refresh_seconds`` (or
        ``force``); a new catalog is listed at once."""
        if not force and self._fresh():
            return
        async with self._lock:
            if not force and self._fresh():
                return
            with self.live.pinned() as catalog:
                backends = list(catalog.backends.values())
                results = await asyncio.gather(*(self._list(b) for b in backends))
                for backend, models in zip(backends, results, strict=True):
                    if models is not None:
                        self._models[backend.name] = {m.name: m for m in models}
                        self._listed[backend.name] = backend
                    elif self._listed.get(backend.name) is not backend:  # a new instance: nothing known yet
                        self._models.pop(backend.name, None)
                        self._listed.pop(backend.name, None)
                for name in [n for n in self._models if n not in catalog.backends]:
                    del self._models[name]
                    self._listed.pop(name, None)
                    self._errors.pop(name, None)
                self._refreshed_at = time.monotonic()
                self._refreshed_for = catalog
                self._routes, self._routes_for = {}, None

    def _fresh(self) -> bool:
        return (self._refreshed_for is self.live.current
                and time.monotonic() - self._refreshed_at < self.refresh_seconds)

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
        catalog = self.live.current
        listed = {backend: models for backend, models in self._models.items() if backend in catalog.backends}
        loaded = {backend: catalog.backends[backend].loaded_models() for backend in listed}
        out = [ModelEntry(id=f"{backend}/{name}", backend=backend, info=info, loaded=name in loaded[backend],
                          expires_at=loaded[backend].get(name))
               for backend, models in listed.items() for name, info in models.items()]
        names = list(self.models) + [a for a in catalog.aliases if not _is_glob(a) and a not in self.models]
        names += [d for d in self.derived if d not in self.models and d not in catalog.aliases]
        for name in names:
            route = self._route(name, catalog)
            if route is not None:
                first = route.first_target
                out.append(ModelEntry(id=name, backend=first.backend.name, info=first.info, alias_of=first.id))
        return out

    # ------------------------------------------------------------- resolution

    async def resolve_route(self, name: str, catalog: Catalog | None = None) -> ModelRoute:
        """The steps a request for ``name`` walks through (see the module docstring), in ``catalog``
        (the one the request pinned; by default the current one)."""
        await self.refresh()
        catalog = catalog or self.live.current
        if self._routes_for is not catalog:
            if catalog is not self.live.current:  # an older catalog: resolved, never cached
                return self._route(name, catalog) or await self._missing(name, catalog)
            self._routes, self._routes_for = {}, catalog
        route = self._routes.get(name)
        if route is not None:
            return route
        route = self._route(name, catalog) or await self._missing(name, catalog)
        if len(self._routes) < 10_000 and self._routes_for is catalog:  # names come from clients: bound the cache
            self._routes[name] = route
        return route

    async def _missing(self, name: str, catalog: Catalog) -> ModelRoute:
        await self.refresh(force=True)  # a model may have appeared upstream
        route = self._route(name, catalog)
        if route is None:
            raise self._not_found(name, catalog)
        return route

    def _route(self, name: str, catalog: Catalog) -> ModelRoute | None:
        steps: list[tuple[Step, bool]] = []
        self._steps(name, catalog, steps, set(), top=True)
        if not steps:
            return None
        if len(steps) > 1:  # concrete steps with somewhere else to go are tried once
            return ModelRoute(name, tuple(Step(s.name, s.deployments, s.strategy, 0, s.timeouts, s.recipe)
                                          if implicit else s for s, implicit in steps))
        return ModelRoute(name, (steps[0][0],))

    def _steps(self, name: str, catalog: Catalog, out: list[tuple[Step, bool]], seen: set[str], *,
               top: bool = False, recipe: str | None = None) -> None:
        """Append the steps of ``name`` to ``out``; ``seen`` cuts cycles and repeats. ``recipe``: the
        created model the walk went through (the one nearest the requested name)."""
        if name in seen:
            return
        seen.add(name)
        spec = self.models.get(name)
        if spec is not None:
            deployments = tuple(Deployment(t, d.weight, d.priority)
                                for d in spec.deployments if (t := self._concrete(d.target, catalog)) is not None)
            if deployments:
                out.append((Step(name, deployments, spec.strategy, spec.retries, spec.timeouts, recipe), False))
                seen.update("\0" + d.id for d in deployments)
            for fallback in spec.fallbacks:
                self._steps(fallback, catalog, out, seen)
            return
        alias = catalog.aliases.get(name)
        if alias is None and name in self.derived:
            alias = (self.derived[name],)
            recipe = recipe or name
        if alias is None and top:  # globs match requested names, not names inside a route (in catalog order)
            alias = next((t for pattern, t in catalog.aliases.items() if _is_glob(pattern)
                          and fnmatch.fnmatchcase(name, pattern)), None)
        if alias is not None:
            for target_name in alias:
                self._steps(target_name, catalog, out, seen, recipe=recipe)
            return
        target = self._concrete(name, catalog)
        if target is not None and "\0" + target.id not in seen:  # reached already, perhaps by another name
            seen.add("\0" + target.id)
            out.append((Step(target.id, (Deployment(target),), recipe=recipe), True))

    def _concrete(self, name: str, catalog: Catalog) -> Target | None:
        backends = catalog.backends
        backend_name, sep, model = name.partition("/")
        if sep and backend_name in backends:
            info = self._models.get(backend_name, {}).get(model)
            if info is not None:
                return Target(backends[backend_name], model, info)
        matches = [(b, models[name]) for b, models in self._models.items() if name in models and b in backends]
        if len(matches) == 1:
            backend, info = matches[0]
            return Target(backends[backend], name, info)
        if not matches and ":" not in name:  # Ollama clients may drop or add ":latest"
            return self._concrete(f"{name}:latest", catalog) if not name.endswith(":latest") else None
        return None

    def _not_found(self, name: str, catalog: Catalog) -> GatewayError:
        spec = self.models.get(name)
        if spec is not None:
            listed = ", ".join(d.target for d in spec.deployments)
            return GatewayError(ErrorKind.UPSTREAM_UNAVAILABLE,
                                f"model {name!r} is configured, but no backend serves any of its deployments "
                                f"({listed}) or fallbacks right now")
        known = [e.id for e in self.entries()]
        served = {b: models for b, models in self._models.items() if b in catalog.backends}
        bare = [m for models in served.values() for m in models]
        ambiguous = sum(1 for models in served.values() if name in models) > 1
        if ambiguous:
            options = [f"{b}/{name}" for b, models in served.items() if name in models]
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
