"""The gateway: the request path, written once against the canonical model for every dialect.

    authenticate -> plan (resolve name, access, overrides, capabilities)
                 -> route (deployments, retries, fallbacks; only before the first event)
                 -> stream (observed: time to first token, usage, outcome)

Nothing here waits on a database: observers (usage, metrics) are handed a finished
:class:`CallOutcome` and queue it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from dragoman.backends.base import CallOptions, Timeouts
from dragoman.config import OverrideConfig
from dragoman.core.fit import estimate_request_tokens, truncate_oldest
from dragoman.core.management import LoadOptions, LoadsModels, ModelRecipe, PullProgress
from dragoman.core.models import ModelEntry
from dragoman.core.service import CallContext, TokenCount
from dragoman.core.tokens import estimate_prompt_tokens
from dragoman.core.types import ChatRequest, EmbeddingRequest, EmbeddingResponse, Reasoning, Tokenized
from dragoman.errors import ErrorKind, GatewayError
from dragoman.gateway import overrides as override_rules
from dragoman.gateway.auth import AccessPolicy, AnonymousAccess
from dragoman.gateway.catalog import Catalog
from dragoman.gateway.deployments import ModelRoute, Step
from dragoman.gateway.model_store import ModelStore
from dragoman.gateway.outcome import CallOutcome, Observer
from dragoman.gateway.recipes import described, with_recipe
from dragoman.gateway.registry import ModelRegistry, Target
from dragoman.gateway.router import Router
from dragoman.gateway.stream import GatewayChatStream

log = logging.getLogger("dragoman.gateway")


class Pricing(Protocol):
    def cost(self, prompt_tokens: int, completion_tokens: int, *names: str | None) -> float | None: ...


class StreamGauge(Protocol):
    def stream_started(self) -> None: ...

    def stream_ended(self) -> None: ...


class Gateway:
    """Implements ``dragoman.core.service.GatewayService``.

    Everything it needs comes in here, built before the first request (see ``dragoman.app``).
    Each call pins the registry's current catalog (backends, aliases, overrides) and uses that
    one to its end, so a live edit never changes a request half way."""

    def __init__(self, registry: ModelRegistry, *, router: Router | None = None,
                 access: AccessPolicy | None = None, timeouts: Timeouts | None = None, forward_keys: bool = False,
                 observers: Sequence[Observer] = (), metrics: StreamGauge | None = None,
                 prices: Pricing | None = None, pull_backend: str | None = None,
                 blob_root: Callable[[], Path] | None = None) -> None:
        self.registry = registry
        self.live = registry.live
        self.router = router or Router()
        self.access: AccessPolicy = access or AnonymousAccess()
        self.timeouts = timeouts or Timeouts()
        self.forward_keys = forward_keys
        self.observers: list[Observer] = list(observers)
        self.metrics = metrics
        self.prices = prices
        self.model_store = ModelStore(registry, pull_backend=pull_backend, blob_root=blob_root)

    # ------------------------------------------------------------ service API

    async def authenticate(self, ctx: CallContext) -> None:
        await self.access.authenticate(ctx)

    async def list_models(self, ctx: CallContext) -> list[ModelEntry]:
        await self.registry.refresh()
        return [e for e in self.registry.entries() if self.access.may_use(ctx, e.id, *_alias(e))]

    async def get_model(self, name: str, ctx: CallContext) -> ModelEntry:
        with self.live.pinned() as catalog:
            entry = _entry(name, (await self._route(name, ctx, catalog)).first_target)
        recipe = self.model_store.recipes.recipes.get(name)
        if recipe is not None:
            entry.info = described(entry.info, recipe)
        return entry

    async def load_model(self, name: str, ctx: CallContext, options: LoadOptions) -> ModelEntry:
        """Load the first target of ``name``'s route; ``expires_at`` says until when."""
        with self.live.pinned() as catalog:
            target = (await self._route(name, ctx, catalog)).first_target
            entry = _entry(name, target)
            if isinstance(target.backend, LoadsModels):
                entry.expires_at = await target.backend.load_model(target.model, options)
                entry.loaded = True
        return entry

    async def unload_model(self, name: str, ctx: CallContext) -> ModelEntry:
        with self.live.pinned() as catalog:
            target = (await self._route(name, ctx, catalog)).first_target
            if isinstance(target.backend, LoadsModels):
                await target.backend.unload_model(target.model)
        return _entry(name, target)

    def check_manage(self, ctx: CallContext) -> None:
        if not self.access.may_manage(ctx):
            raise GatewayError(ErrorKind.PERMISSION, "this key may not manage models (pull, create, copy, delete "
                                                     "need a key whose metadata has \"admin\": true)",
                               code="admin_required")

    async def pull_model(self, name: str, ctx: CallContext) -> AsyncIterator[PullProgress]:
        """Refuses (before any progress) callers that may not manage models and names no backend pulls."""
        self.check_manage(ctx)
        self.model_store.target(name)
        return self.model_store.pull(name)

    async def delete_model(self, name: str, ctx: CallContext) -> None:
        self.check_manage(ctx)
        await self.model_store.delete(name)

    async def create_model(self, recipe: ModelRecipe, ctx: CallContext) -> list[PullProgress]:
        self.check_manage(ctx)
        return await self.model_store.create(recipe)

    async def copy_model(self, source: str, destination: str, ctx: CallContext) -> None:
        self.check_manage(ctx)
        await self.model_store.copy(source, destination)

    async def has_blob(self, digest: str, ctx: CallContext) -> bool:
        self.check_manage(ctx)
        return self.model_store.blob_path(digest).is_file()

    async def save_blob(self, digest: str, chunks: AsyncIterator[bytes], ctx: CallContext) -> bool:
        self.check_manage(ctx)
        return await self.model_store.save_blob(digest, chunks)

    async def count_tokens(self, request: ChatRequest, ctx: CallContext) -> TokenCount:
        with self.live.pinned() as catalog:
            target = (await self._route(request.model, ctx, catalog)).first_target
            exact = await target.backend.count_tokens(request, target.model)
        if exact is not None:
            return TokenCount(exact, True)
        return TokenCount(estimate_prompt_tokens(request), False)

    async def tokenize(self, request: ChatRequest, ctx: CallContext, *, add_special: bool) -> Tokenized:
        with self.live.pinned() as catalog:
            target = (await self._route(request.model, ctx, catalog)).first_target
            result = await target.backend.tokenize(request, target.model, add_special=add_special)
        if result is None:
            raise _no_tokenizer(target)
        if result.max_model_len is None:
            result.max_model_len = target.info.context_length
        return result

    async def detokenize(self, model: str, tokens: list[int], ctx: CallContext) -> str:
        with self.live.pinned() as catalog:
            target = (await self._route(model, ctx, catalog)).first_target
            text = await target.backend.detokenize(tokens, target.model)
        if text is None:
            raise _no_tokenizer(target)
        return text

    async def embed(self, request: EmbeddingRequest, ctx: CallContext) -> EmbeddingResponse:
        outcome = ctx.outcome = CallOutcome(ctx, "embeddings", request.model, False)
        pin = self.live.pin()
        try:
            catalog = pin.catalog
            route = await self._route(request.model, ctx, catalog)
            lease = await self.access.acquire(ctx, route.first_target.id)
            try:
                response, target, attempts = await self.router.embed(
                    route, request, lambda step, t: self._call_options(ctx, t, catalog, step))
            finally:
                if lease is not None:
                    await lease.release(0)
            outcome.target, outcome.backend, outcome.attempts = target.id, target.backend.name, attempts
            outcome.usage = response.usage
            return response
        except GatewayError as exc:
            outcome.status, outcome.error_kind = exc.status, exc.kind.value
            raise
        except asyncio.CancelledError:
            outcome.cancel()
            raise
        finally:
            self.live.release(pin)
            outcome.latency = time.perf_counter() - ctx.started_at
            self._notify(outcome)

    async def chat(self, request: ChatRequest, ctx: CallContext) -> GatewayChatStream:
        outcome = ctx.outcome = CallOutcome(ctx, "chat", request.model, request.stream)
        pin = self.live.pin()  # released when the stream closes
        try:
            catalog = pin.catalog
            route = await self._route(request.model, ctx, catalog)
            request, truncated = await self._fit_context(request, route, catalog)
            lease = await self.access.acquire(ctx, route.first_target.id, request)
            try:
                started = await self.router.start(
                    route, lambda step, t: self._prepare(request, ctx, catalog, step, t), started_at=ctx.started_at)
            except BaseException:
                if lease is not None:
                    await lease.release(0)
                raise
        except GatewayError as exc:
            self.live.release(pin)
            outcome.status, outcome.error_kind = exc.status, exc.kind.value
            outcome.latency = time.perf_counter() - ctx.started_at
            self._notify(outcome)
            raise
        except asyncio.CancelledError:  # the client left before the answer started
            self.live.release(pin)
            outcome.cancel()
            outcome.latency = time.perf_counter() - ctx.started_at
            self._notify(outcome)
            raise
        except BaseException:
            self.live.release(pin)
            raise
        outcome.target, outcome.backend = started.target.id, started.target.backend.name
        outcome.attempts = started.attempts
        plan = started.request
        headers = {  # overhead: dragoman's own time before the first event (see gateway.router)
            "x-dragoman-backend": started.target.id,
            "x-dragoman-attempts": str(started.attempts),
            "x-dragoman-overhead-ms": f"{started.overhead * 1000:.2f}",
        }
        if request.tools and not plan.tools:  # ``tools: drop`` for a model without tool support
            headers["x-dragoman-dropped-tools"] = ",".join(tool.name for tool in request.tools)
        if truncated:  # ``context: truncate_oldest``
            headers["x-dragoman-truncated-messages"] = str(truncated)
        if request.stream and self.metrics is not None:
            self.metrics.stream_started()

        async def closed(outcome: CallOutcome) -> None:
            try:
                if lease is not None:
                    cost = self.prices.cost(outcome.usage.prompt_tokens, outcome.usage.completion_tokens,
                                            outcome.target, outcome.requested_model) if self.prices else None
                    await lease.release(outcome.usage.total_tokens, cost or 0.0)
            finally:
                self.live.release(pin)
            if request.stream and self.metrics is not None:
                self.metrics.stream_ended()
            self._notify(outcome)

        return GatewayChatStream(started, headers=headers, outcome=outcome,
                                 exclude_reasoning=plan.reasoning.exclude,
                                 prompt_estimate=lambda: estimate_prompt_tokens(request), on_close=closed)

    # ---------------------------------------------------------------- routing

    async def _route(self, name: str, ctx: CallContext, catalog: Catalog) -> ModelRoute:
        """The route for a requested name, with what this key may not use left out.

        A key allowed the requested name may use every deployment and fallback the operator put
        behind it (as with aliases); otherwise each step or target must be allowed itself."""
        if not name:
            raise GatewayError(ErrorKind.INVALID_REQUEST, "model is required", param="model")
        route = await self.registry.resolve_route(name, catalog)
        if self.access.may_use(ctx, name):
            return route
        steps = []
        for step in route.steps:
            allowed = tuple(d for d in step.deployments if self.access.may_use(ctx, step.name, d.id))
            if allowed:
                steps.append(Step(step.name, allowed, step.strategy, step.retries, step.timeouts, step.recipe))
        if not steps:
            raise GatewayError(ErrorKind.PERMISSION, f"this key may not use model {name!r}",
                               code="model_not_allowed", param="model")
        return ModelRoute(route.name, tuple(steps))

    def _prepare(self, request: ChatRequest, ctx: CallContext, catalog: Catalog, step: Step,
                 target: Target) -> tuple[ChatRequest, CallOptions]:
        """The request as one target gets it (the router calls this per attempted target)."""
        return self._plan(request, target, catalog, step.recipe), self._call_options(ctx, target, catalog, step)

    def _plan(self, request: ChatRequest, target: Target, catalog: Catalog,
              recipe_name: str | None = None) -> ChatRequest:
        rules = override_rules.matching(catalog.overrides, target.id, request.model)
        recipe = self.model_store.recipes.recipes.get(recipe_name) if recipe_name else None
        if recipe is not None:  # a created model: its parameters win over the overrides of what it is made from
            rules.append(OverrideConfig(**dict(recipe.parameters)))
            request = with_recipe(request, recipe)
        planned = override_rules.apply(request, rules)
        caps = target.info.capabilities
        if planned.prompt is None and not caps.chat:
            raise GatewayError(ErrorKind.INVALID_REQUEST, f"model {target.id!r} does not support chat",
                               param="model")
        if planned.has_images and not caps.vision:
            raise GatewayError(ErrorKind.INVALID_REQUEST,
                               f"model {target.id!r} does not accept images", param="messages")
        if planned.tools and not caps.tools:
            if override_rules.tools_policy(rules) != "drop":
                raise GatewayError(ErrorKind.INVALID_REQUEST,
                                   f"model {target.id!r} does not support tools (an override with "
                                   "'tools: drop' leaves them out for it)", param="tools")
            planned = replace(planned, tools=[], tool_choice=None)
        if planned.logprobs is not None and not caps.logprobs:
            raise GatewayError(ErrorKind.INVALID_REQUEST, f"model {target.id!r} does not report logprobs",
                               param="logprobs")
        fmt = planned.response_format
        if fmt is not None and fmt.type == "json_schema" and not caps.json_schema:
            raise GatewayError(ErrorKind.INVALID_REQUEST,
                               f"model {target.id!r} does not support json_schema output",
                               param="response_format")
        if not caps.reasoning and (planned.reasoning.enabled or planned.reasoning.effort not in (None, "none")):
            # Reasoning is a preference, not a requirement: a model that cannot think answers directly.
            planned = replace(planned, reasoning=Reasoning(exclude=planned.reasoning.exclude))
        return planned

    async def _fit_context(self, request: ChatRequest, route: ModelRoute,
                           catalog: Catalog) -> tuple[ChatRequest, int]:
        """``context: truncate_oldest``: the request without the oldest messages that would not fit
        the first target's window (counted exactly where the backend has a tokenizer), and how
        many were left out."""
        if not catalog.overrides:  # the common case: nothing to fit
            return request, 0
        target = route.first_target
        rules = override_rules.matching(catalog.overrides, target.id, request.model)
        window = target.info.context_length
        if override_rules.context_policy(rules) != "truncate_oldest" or not window or request.prompt is not None:
            return request, 0
        try:
            # counted as the target will get it (tools dropped ...)
            planned = self._plan(request, target, catalog, route.steps[0].recipe)
        except GatewayError:
            return request, 0  # the router reports it

        async def count(candidate: ChatRequest) -> int:
            exact = await target.backend.count_tokens(candidate, target.model)
            return exact if exact is not None else estimate_request_tokens(candidate)

        fitted, dropped = await truncate_oldest(planned, count, window)
        return (replace(request, messages=fitted.messages), dropped) if dropped else (request, 0)

    def _call_options(self, ctx: CallContext, target: Target, catalog: Catalog,
                      step: Step | None = None) -> CallOptions:
        """Timeouts: the step's (a ``models:`` entry's, merged with the global ones), else the
        global ones; an override's ``request_timeout`` is then the total. The deadline is that
        total after the request arrived (so routing, retries and the answer all count)."""
        timeouts = step.timeouts if step is not None and step.timeouts is not None else self.timeouts
        override = override_rules.request_timeout(catalog.overrides, target.id)
        if override is not None:
            timeouts = timeouts.with_limit("total", *override)
        elapsed = time.perf_counter() - ctx.started_at
        deadline = asyncio.get_running_loop().time() + timeouts.total - elapsed
        return CallOptions(timeouts=timeouts, client_api_key=ctx.api_key if self.forward_keys else None,
                           deadline=deadline)

    def _notify(self, outcome: CallOutcome) -> None:
        for observer in self.observers:
            try:
                observer(outcome)
            except Exception:
                log.exception("usage observer failed")


def _no_tokenizer(target: Target) -> GatewayError:
    return GatewayError(ErrorKind.INVALID_REQUEST,
                        f"model {target.id!r} cannot tokenize: its backend ({target.backend.type}) has no tokenizer "
                        "dragoman can ask (local models and upstreams with a /tokenize endpoint, such as vLLM, "
                        "have one)",
                        param="model", code="tokenize_unsupported")


def _entry(name: str, first: Target) -> ModelEntry:
    return ModelEntry(id=name, backend=first.backend.name, info=first.info,
                      alias_of=first.id if first.id != name else None)


def _alias(entry: ModelEntry) -> tuple[str, ...]:
    return (entry.alias_of,) if entry.alias_of else ()
