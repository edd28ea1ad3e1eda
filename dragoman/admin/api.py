"""The admin HTTP API (``/admin/api/...``, JSON): everything the admin pages do goes through it.

Handlers here assume the caller is already authorised (``routes.py`` wraps each one); they
raise ``GatewayError`` for anything the caller got wrong. docs/admin-api.md documents them.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from dragoman import __version__
from dragoman.admin import model_load
from dragoman.admin.live import LiveSettings
from dragoman.admin.masking import mask
from dragoman.admin.queries import RANGES, UsageFilter, distinct_models, iter_usage, series, usage_page
from dragoman.core.management import PullsModels
from dragoman.errors import ErrorKind, GatewayError, invalid_request
from dragoman.gateway.keys import KeyInfo, KeyService
from dragoman.gateway.store import Store
from dragoman.gateway.timeutil import as_utc, utcnow
from dragoman.gateway.usage_store import UsageStore, UsageSummary
from dragoman.serving.answers import json_response
from dragoman.serving.endpoints import Endpoint

if TYPE_CHECKING:
    from dragoman.services import AppServices


MAX_BODY = 1 << 20
FOREVER = 50 * 365 * 86400.0  # an expiry further away than this is "until unloaded"
KEY_FIELDS = ("name", "models", "expires_at", "rpm", "tpm", "max_parallel", "budget_tokens", "budget_cost",
              "budget_period", "enabled", "metadata")


def error_body(exc: GatewayError) -> dict[str, Any]:
    return {"error": {"type": exc.kind.value, "message": exc.message, "param": exc.param}}


async def read_body(request: Request) -> Any:
    body = await request.body()
    if len(body) > MAX_BODY:
        raise GatewayError(ErrorKind.PAYLOAD_TOO_LARGE, "request body is larger than 1 MiB")
    if not body:
        raise invalid_request("request body is empty; expected JSON")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise invalid_request(f"request body is not valid JSON: {exc}") from exc


async def read_object(request: Request) -> dict[str, Any]:
    data = await read_body(request)
    if not isinstance(data, dict):
        raise invalid_request("request body must be a JSON object")
    return data


def parse_time(value: Any, param: str) -> datetime | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise invalid_request(f"{param} must be an ISO 8601 date/time", param)
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise invalid_request(f"{param} must be an ISO 8601 date/time, not {value!r}", param) from exc
    return as_utc(when)


def int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise invalid_request(f"{name} must be an integer", name) from exc
    if not low <= value <= high:
        raise invalid_request(f"{name} must be between {low} and {high}", name)
    return value


def iso(value: datetime | None) -> str | None:
    return None if value is None else as_utc(value).isoformat()


def key_dict(info: KeyInfo) -> dict[str, Any]:
    return {
        "id": info.id, "name": info.name, "hint": info.hint, "models": list(info.models),
        "expires_at": iso(info.expires_at), "rpm": info.rpm, "tpm": info.tpm, "max_parallel": info.max_parallel,
        "budget_tokens": info.budget_tokens, "budget_cost": info.budget_cost, "budget_period": info.budget_period,
        "enabled": info.enabled, "metadata": info.metadata, "created_at": iso(info.created_at),
        "last_used_at": iso(info.last_used_at),
        "expired": info.expires_at is not None and info.expires_at <= utcnow(),
        "source": info.source,  # "config": a static key, changed in the config, not here
    }


def summary_dict(row: UsageSummary) -> dict[str, Any]:
    # str(): the group's keys are SQLAlchemy ``quoted_name`` objects, which orjson refuses.
    return {**{str(k): (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.group.items()},
            "requests": row.requests, "errors": row.errors, "prompt_tokens": row.prompt_tokens,
            "completion_tokens": row.completion_tokens, "total_tokens": row.total_tokens,
            "reasoning_tokens": row.reasoning_tokens, "cost": row.cost,
            "avg_latency_ms": None if row.avg_latency_ms is None else round(row.avg_latency_ms, 1)}


def key_changes(data: dict[str, Any]) -> dict[str, Any]:
    """The editable key fields of a request body, with dates parsed and blanks as ``None``."""
    unknown = set(data) - set(KEY_FIELDS)
    if unknown:
        raise invalid_request(f"unknown key field(s): {', '.join(sorted(unknown))}", sorted(unknown)[0])
    out = dict(data)
    if "expires_at" in out:
        out["expires_at"] = parse_time(out["expires_at"], "expires_at")
    for name in ("rpm", "tpm", "max_parallel", "budget_tokens", "budget_cost", "budget_period"):
        if out.get(name) == "":
            out[name] = None
    if isinstance(out.get("models"), str):
        out["models"] = [m.strip() for m in out["models"].split(",") if m.strip()]
    return out


def csv_cell(value: Any) -> Any:
    """Neutralise spreadsheet formulas in client-chosen text (model and key names)."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


class AdminAPI:
    """The API handlers, each ``async (request) -> Response``."""

    def __init__(self, services: AppServices, live: LiveSettings) -> None:
        self.services = services
        self.live = live

    # -- plumbing -----------------------------------------------------------------------------

    @property
    def store(self) -> Store:
        return self.services.store

    @property
    def keys(self) -> KeyService:
        return self.services.keys

    def routes(self) -> list[tuple[str, Endpoint, list[str]]]:
        return [
            ("/info", self.info, ["GET"]),
            ("/overview", self.overview, ["GET"]),
            ("/keys", self.list_keys, ["GET"]),
            ("/keys", self.create_key, ["POST"]),
            ("/keys/{key_id}", self.get_key, ["GET"]),
            ("/keys/{key_id}", self.update_key, ["PATCH"]),
            ("/keys/{key_id}", self.revoke_key, ["DELETE"]),
            ("/keys/{key_id}/usage", self.key_usage, ["GET"]),
            ("/models", self.models, ["GET"]),
            ("/models/refresh", self.refresh_models, ["POST"]),
            ("/models/load", self.load_model, ["POST"]),
            ("/models/unload", self.unload_model, ["POST"]),
            ("/aliases/{name:path}", self.put_alias, ["PUT"]),
            ("/aliases/{name:path}", self.delete_alias, ["DELETE"]),
            ("/overrides/{pattern:path}", self.put_override, ["PUT"]),
            ("/overrides/{pattern:path}", self.delete_override, ["DELETE"]),
            ("/usage", self.usage, ["GET"]),
            ("/usage.csv", self.usage_csv, ["GET"]),
            ("/backends", self.list_backends, ["GET"]),
            ("/backends", self.create_backend, ["POST"]),
            ("/backends/test", self.test_backend, ["POST"]),
            ("/backends/{name}", self.update_backend, ["PUT"]),
            ("/backends/{name}", self.delete_backend, ["DELETE"]),
        ]

    # -- info and overview --------------------------------------------------------------------

    async def info(self, request: Request) -> Response:
        config = self.services.config
        return json_response({
            "version": __version__, "auth_mode": config.auth.mode,
            "database": self.store.dialect, "backend_types": self.services.backend_types.names(),
            "dialects": ["openai", "ollama", "anthropic"],
        })

    def backend_health(self) -> list[dict[str, Any]]:
        registry = self.services.registry
        checks = self.services.backend_health
        out = []
        for name, backend in registry.backends.items():
            error = registry.backend_error(name)
            check = checks.get(name)
            if check is not None and not check.ok:
                error = error or check.last_error
            out.append({"name": name, "type": backend.type, "reachable": error is None,
                        "model_count": registry.model_count(name), "last_error": error,
                        "checked_at": None if check is None else check.checked_at})
        return out

    async def overview(self, request: Request) -> Response:
        name = request.query_params.get("range", "24h")
        if name not in RANGES:
            raise invalid_request(f"range must be one of {', '.join(RANGES)}", "range")
        length, bucket = RANGES[name]
        size = int(bucket.total_seconds())
        end = (int(time.time()) // size + 1) * size
        until = datetime.fromtimestamp(end, utcnow().tzinfo)
        since = until - length
        flt = UsageFilter(key_id=request.query_params.get("key") or None,
                          model=request.query_params.get("model") or None)
        points = await series(self.store, flt, since=since, until=until, bucket=bucket)
        usage = UsageStore(self.store)
        by_model = await usage.aggregate(since=since, by=("model",), key_id=flt.key_id)
        by_key = await usage.aggregate(since=since, by=("key",))
        requests = sum(p["requests"] for p in points)
        weighted = sum((p["avg_latency_ms"] or 0) * p["requests"] for p in points)
        totals = {
            "requests": requests, "errors": sum(p["errors"] for p in points),
            "prompt_tokens": sum(p["prompt_tokens"] for p in points),
            "completion_tokens": sum(p["completion_tokens"] for p in points),
            "avg_latency_ms": round(weighted / requests, 1) if requests else None,
        }
        return json_response({
            "range": name, "since": since.isoformat(), "until": until.isoformat(), "bucket_seconds": size,
            "totals": totals, "series": points,
            "by_model": [summary_dict(r) for r in by_model[:50]],
            "by_key": [summary_dict(r) for r in by_key[:50]],
            "backends": self.backend_health(),
        })

    # -- keys ---------------------------------------------------------------------------------

    async def list_keys(self, request: Request) -> Response:
        keys = await self.keys.list_keys()
        since = utcnow() - timedelta(days=7)
        totals = {r.group.get("key_id"): r for r in await UsageStore(self.store).aggregate(since=since, by=("key",))}
        out = []
        for info in keys:
            row = totals.get(info.id)
            out.append({**key_dict(info), "usage_7d": None if row is None else summary_dict(row)})
        return json_response({"keys": out, "auth_mode": self.services.config.auth.mode})

    async def create_key(self, request: Request) -> Response:
        data = key_changes(await read_object(request))
        name = data.pop("name", None)
        if not isinstance(name, str):
            raise invalid_request("name is required", "name")
        info, secret = await self.keys.create(name, **data)
        return json_response({"key": key_dict(info), "secret": secret}, status=201)

    async def get_key(self, request: Request) -> Response:
        return json_response({"key": key_dict(await self.keys.get(request.path_params["key_id"]))})

    async def update_key(self, request: Request) -> Response:
        changes = key_changes(await read_object(request))
        info = await self.keys.update(request.path_params["key_id"], changes)
        return json_response({"key": key_dict(info)})

    async def revoke_key(self, request: Request) -> Response:
        info = await self.keys.revoke(request.path_params["key_id"])
        return json_response({"revoked": key_dict(info)})

    async def key_usage(self, request: Request) -> Response:
        info = await self.keys.get(request.path_params["key_id"])
        name = request.query_params.get("range", "7d")
        if name not in RANGES:
            raise invalid_request(f"range must be one of {', '.join(RANGES)}", "range")
        length, bucket = RANGES[name]
        size = int(bucket.total_seconds())
        until = datetime.fromtimestamp((int(time.time()) // size + 1) * size, utcnow().tzinfo)
        since = until - length
        flt = UsageFilter(key_id=info.id)
        points = await series(self.store, flt, since=since, until=until, bucket=bucket)
        by_model = await UsageStore(self.store).aggregate(since=since, by=("model",), key_id=info.id)
        recent, _ = await usage_page(self.store, flt, page=1, per_page=10)
        return json_response({"key": key_dict(info), "range": name, "bucket_seconds": size, "series": points,
                              "by_model": [summary_dict(r) for r in by_model], "recent": recent})

    # -- models, aliases, overrides -----------------------------------------------------------

    async def models(self, request: Request) -> Response:
        await self.services.registry.refresh()
        return json_response(await self._models_body())

    async def refresh_models(self, request: Request) -> Response:
        await self.services.registry.refresh(force=True)
        return json_response(await self._models_body())

    async def _models_body(self) -> dict[str, Any]:
        import fnmatch

        registry = self.services.registry
        aliases = registry.aliases
        overrides = await self.live.overrides()
        entries = registry.entries()
        by_backend: dict[str, list[dict[str, Any]]] = {name: [] for name in registry.backends}
        for entry in entries:
            if entry.alias_of is not None or entry.backend not in by_backend:
                continue
            caps = entry.info.capabilities
            names = (entry.id, entry.info.name)
            by_backend[entry.backend].append({
                "id": entry.id, "name": entry.info.name,
                "capabilities": {"chat": caps.chat, "completion": caps.completion, "vision": caps.vision,
                                 "tools": caps.tools, "reasoning": caps.reasoning,
                                 "json_schema": caps.json_schema, "embeddings": caps.embeddings},
                "context_length": entry.info.context_length,
                "family": entry.info.details.family or None,
                "aliases": sorted(a for a, targets in aliases.items() if any(t in names for t in targets)),
                "overrides": sorted(p for p in overrides if any(fnmatch.fnmatchcase(n, p) for n in names)),
            })
        resolved = {e.id: e.alias_of for e in entries if e.alias_of is not None}
        health = {h["name"]: h for h in self.backend_health()}
        store = self.services.gateway.model_store
        pulled = {f"{b.name}/{n}" for b in registry.backends.values() if isinstance(b, PullsModels)
                  for n in b.pulled_models()}
        for models in by_backend.values():
            for model in models:
                model["pulled"] = model["id"] in pulled
        return {
            "created": [{"name": name, "from": r.source, "system": r.system, "parameters": dict(r.parameters),
                         "resolves_to": resolved.get(name)} for name, r in store.recipes.recipes.items()],
            "pulls": [{"name": p.name, "backend": p.backend, "status": p.status, "total": p.total,
                       "completed": p.completed} for p in store.running.values()],
            "backends": [{**health[name], "models": models} for name, models in by_backend.items()],
            "aliases": [{"name": a, "targets": t, "resolves_to": resolved.get(a)} for a, t in aliases.items()],
            "overrides": overrides,
            "refresh_seconds": registry.refresh_seconds,
        }

    async def load_model(self, request: Request) -> Response:
        data = await read_object(request)
        name, options = model_load.model_name(data), model_load.load_options(data)
        entry = await self.services.gateway.load_model(name, model_load.admin_context(), options)
        expires = entry.expires_at
        return json_response({"model": name, "target": entry.alias_of or name, "loaded": True,
                              "expires_at": None if expires is None or expires > time.time() + FOREVER else expires,
                              "context_length": entry.info.context_length})

    async def unload_model(self, request: Request) -> Response:
        name = model_load.model_name(await read_object(request))
        entry = await self.services.gateway.unload_model(name, model_load.admin_context())
        return json_response({"model": name, "target": entry.alias_of or name, "loaded": False})

    async def put_alias(self, request: Request) -> Response:
        data = await read_object(request)
        await self.live.set_alias(request.path_params["name"], data.get("targets"))
        return json_response(await self._models_body())

    async def delete_alias(self, request: Request) -> Response:
        await self.live.delete_alias(request.path_params["name"])
        return json_response(await self._models_body())

    async def put_override(self, request: Request) -> Response:
        await self.live.set_override(request.path_params["pattern"], await read_body(request))
        return json_response(await self._models_body())

    async def delete_override(self, request: Request) -> Response:
        await self.live.delete_override(request.path_params["pattern"])
        return json_response(await self._models_body())

    # -- usage --------------------------------------------------------------------------------

    def usage_filter(self, request: Request) -> UsageFilter:
        q = request.query_params
        status = q.get("status") or None
        if status is not None and status not in ("ok", "error") and not (status.isdigit() and len(status) == 3):
            raise invalid_request("status must be ok, error or an HTTP status code", "status")
        since, until = parse_time(q.get("since"), "since"), parse_time(q.get("until"), "until")
        if since is not None and until is not None and until <= since:
            raise invalid_request("until must be after since", "until")
        return UsageFilter(key_id=q.get("key") or None, model=q.get("model") or None, status=status,
                           since=since, until=until)

    async def usage(self, request: Request) -> Response:
        flt = self.usage_filter(request)
        page = int_param(request, "page", 1, 1, 1_000_000)
        per_page = int_param(request, "per_page", 50, 1, 500)
        items, total = await usage_page(self.store, flt, page=page, per_page=per_page)
        body: dict[str, Any] = {"items": items, "total": total, "page": page, "per_page": per_page,
                                "pages": max(1, -(-total // per_page))}
        if request.query_params.get("facets"):
            body["models"] = await distinct_models(self.store)
        return json_response(body)

    async def usage_csv(self, request: Request) -> Response:
        flt = self.usage_filter(request)
        from dragoman.admin.queries import COLUMNS

        async def rows() -> AsyncIterator[bytes]:
            buffer = io.StringIO()
            writer = csv.writer(buffer)
            writer.writerow(COLUMNS)
            count = 0
            async for record in iter_usage(self.store, flt):
                writer.writerow([csv_cell(record[c]) for c in COLUMNS])
                count += 1
                if count % 500 == 0:
                    yield buffer.getvalue().encode()
                    buffer.seek(0)
                    buffer.truncate()
            yield buffer.getvalue().encode()

        stamp = utcnow().strftime("%Y%m%d-%H%M%S")
        return StreamingResponse(rows(), media_type="text/csv; charset=utf-8", headers={
            "content-disposition": f'attachment; filename="dragoman-usage-{stamp}.csv"'})

    # -- backends -----------------------------------------------------------------------------

    async def list_backends(self, request: Request) -> Response:
        stored = await self.live.backend_settings()
        health = {h["name"]: h for h in self.backend_health()}
        out = []
        for name in dict.fromkeys([*self.services.registry.backends, *stored]):
            entry = stored.get(name)
            settings = {k: v for k, v in (entry or {}).items() if k != "type"}
            h = health.get(name, {"reachable": False, "model_count": 0, "last_error": "not running"})
            out.append({
                "name": name, "type": (entry or {}).get("type") or h.get("type"),
                "settings": mask(settings), "source": self.live.source(name, entry),
                "reachable": h["reachable"], "model_count": h["model_count"], "last_error": h["last_error"],
            })
        return json_response({"backends": out, "types": self.services.backend_types.names(), "applies": "runtime"})

    async def create_backend(self, request: Request) -> Response:
        data = await read_object(request)
        name = data.get("name")
        if not isinstance(name, str):
            raise invalid_request("name is required", "name")
        entry = self.live.prepare(name, data, None)
        await self.live.save_backend(name, entry, create=True)
        return await self.list_backends(request)

    async def update_backend(self, request: Request) -> Response:
        name = request.path_params["name"]
        stored = await self.live.backend_settings()
        entry = self.live.prepare(name, await read_object(request), stored.get(name))
        await self.live.save_backend(name, entry, create=False)
        return await self.list_backends(request)

    async def delete_backend(self, request: Request) -> Response:
        await self.live.delete_backend(request.path_params["name"])
        return await self.list_backends(request)

    async def test_backend(self, request: Request) -> Response:
        data = await read_object(request)
        name = data.get("name") or "test"
        if not isinstance(name, str):
            raise invalid_request("name must be a string", "name")
        stored = await self.live.backend_settings()
        entry = self.live.prepare(name, data, stored.get(name))
        return json_response(await self.live.test_backend(name, entry))
