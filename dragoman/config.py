"""Configuration: a YAML file with ``${VAR}`` interpolation, validated by pydantic.

The spellings of ``server``, ``backends`` (``name``, ``type``, ``base_url``, ``api_key``,
``models``) are a contract outside tools rely on. A broken file fails at start with a
:class:`ConfigError` naming the file, the key and what is wrong, never a traceback.

Precedence, lowest first: the built-in defaults (no file), the file, the ``DRAGOMAN_*``
environment variables (``dragoman.envconfig``), then command-line flags (which the CLI passes
as those same variables).
"""

from __future__ import annotations

import ipaddress
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from dragoman.core.validation import describe_validation_error as describe_validation_error  # re-exported

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 11435
MIN_STATIC_KEY_LENGTH = 16
MAX_STATIC_KEY_LENGTH = 256  # what authentication accepts at all
DATA_DIR_ENV = "DRAGOMAN_DATA_DIR"
DATABASE_FILE = "dragoman.db"
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """A configuration problem, phrased for the person who wrote the file."""


class TLSConfig(BaseModel):
    """``server.tls``: uvicorn serves https itself. Relative paths are from the config file's folder."""

    model_config = ConfigDict(extra="forbid")

    certfile: Path  # PEM certificate chain (may hold the key too)
    keyfile: Path | None = None  # PEM private key, when not in certfile
    ca_certs: Path | None = None  # CA bundle: when set, clients must present a certificate it signed

    def resolved(self, base: Path) -> TLSConfig:
        def absolute(path: Path | None) -> Path | None:
            return None if path is None else (base / path.expanduser()).resolve()
        return TLSConfig(certfile=(base / self.certfile.expanduser()).resolve(), keyfile=absolute(self.keyfile),
                         ca_certs=absolute(self.ca_certs))


LogLevel = Literal["debug", "info", "warning", "error"]


@dataclass(frozen=True, slots=True)
class DataDir:
    """Where dragoman writes its state, and how that place was chosen (for error messages)."""

    path: Path
    origin: str


def resolve_data_dir(setting: Path | None, config_file: Path | None, environ: Mapping[str, str]) -> DataDir:
    """The data directory: the SQLite file, generated secrets, anything dragoman writes.

    The configuration itself may be read-only (a ``:ro`` mount, a Kubernetes ConfigMap), so state has
    its own place: ``data_dir:`` in the file (relative to the file), else ``DRAGOMAN_DATA_DIR``, else
    the config file's folder when dragoman may write there (where ``dragoman.db`` always was), else
    the user's ``~/.dragoman``. Nothing is created here; see :meth:`Config.writable_data_dir`.
    """
    if setting is not None:
        path = setting.expanduser()
        if config_file is not None:
            return DataDir(config_file.parent / path, f"data_dir in {config_file}")
        return DataDir(path.absolute(), "data_dir")
    from_env = environ.get(DATA_DIR_ENV)
    if from_env:
        return DataDir(Path(from_env).expanduser().absolute(), DATA_DIR_ENV)
    hint = f"the default; choose another with data_dir: or {DATA_DIR_ENV}"
    if config_file is not None and os.access(config_file.parent, os.W_OK):
        return DataDir(config_file.parent, hint)
    return DataDir(Path.home() / ".dragoman", hint)


class ServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = DEFAULT_HOST
    port: int = Field(DEFAULT_PORT, ge=0, le=65535)
    cors_origins: list[str] = Field(default_factory=lambda: ["*"])
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    log_level: LogLevel = "info"
    # The console log: "text" for people, "json" (one object a line, the request log's fields as
    # keys) for log collectors.
    log_format: Literal["text", "json"] = "text"
    tls: TLSConfig | None = None
    # Reverse proxies (addresses or networks, "*" for any) whose X-Forwarded-For/-Proto are believed:
    # client addresses for logs and the admin sign-in throttle, https for Secure cookies. Empty: none,
    # and the headers are not even parsed. ``trusted_proxies`` is accepted as another name for it.
    forwarded_allow_ips: list[str] = Field(default_factory=list)
    # Slow clients (dragoman.connections): seconds to send a request head before the connection
    # is closed; seconds a request body may stall before a 408; connections open at once (beyond
    # it, a 503 in the client's dialect).
    header_timeout: float = Field(10.0, gt=0)
    body_timeout: float = Field(30.0, gt=0)
    max_connections: int = Field(1000, ge=1)
    # Worker processes sharing the port (``auto``: one per core); see dragoman.workers.
    workers: int | Literal["auto"] = 1
    # Several workers would each load every embedded llama.cpp model (memory times workers): refused
    # unless this says it is meant.
    local_models_per_worker: bool = False
    # Seconds between checks for admin UI changes made by another worker or instance (aliases,
    # overrides, backends); unset: 2 with several workers, never with one.
    settings_refresh: float | None = Field(None, gt=0)

    @field_validator("workers")
    @classmethod
    def _workers(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= 256:
            raise ValueError("workers must be from 1 to 256, or 'auto' (one per core)")
        return value

    @property
    def worker_count(self) -> int:
        """The number of worker processes ``workers`` stands for on this machine."""
        if self.workers == "auto":
            return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
        return self.workers

    @model_validator(mode="before")
    @classmethod
    def _trusted_proxies_alias(cls, data: Any) -> Any:
        if isinstance(data, dict) and "trusted_proxies" in data:
            if "forwarded_allow_ips" in data:
                raise ValueError("trusted_proxies and forwarded_allow_ips are one setting; keep forwarded_allow_ips")
            data = {("forwarded_allow_ips" if k == "trusted_proxies" else k): v for k, v in data.items()}
        return data

    @field_validator("forwarded_allow_ips", mode="before")
    @classmethod
    def _split_addresses(cls, value: Any) -> Any:
        """A comma-separated string (as an environment variable holds it) is a list too."""
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        for item in value:
            if item == "*":
                continue
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address, a network (10.0.0.0/8) or '*'") from None
        return value

    @property
    def trusted_proxies(self) -> list[str]:
        """The older name of :attr:`forwarded_allow_ips`."""
        return self.forwarded_allow_ips


class TimeoutConfig(BaseModel):
    """Seconds: connecting, the answer's first byte, a gap between two chunks of it, and the whole
    request from its arrival (routing, retries and the whole answer; an hour by default)."""

    model_config = ConfigDict(extra="forbid")

    connect: float = Field(10.0, gt=0)
    first_byte: float = Field(600.0, gt=0)
    idle: float = Field(120.0, gt=0)
    total: float = Field(3600.0, gt=0)


class PartialTimeoutConfig(BaseModel):
    """A model's own timeouts; what is left out comes from the global ``timeouts:``."""

    model_config = ConfigDict(extra="forbid")

    connect: float | None = Field(None, gt=0)
    first_byte: float | None = Field(None, gt=0)
    idle: float | None = Field(None, gt=0)
    total: float | None = Field(None, gt=0)


Strategy = Literal["weighted_random", "least_busy", "lowest_latency"]


class CooldownConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    failures: int = Field(3, ge=1)
    window: float = Field(60.0, gt=0)
    period: float = Field(30.0, gt=0)
    key_prefix: str = "dragoman:cooldown:"  # Redis keys, when ``redis:`` is set


class RoutingConfig(BaseModel):
    """``routing:``: defaults for every model; see ``dragoman.gateway.router`` for the walk."""

    model_config = ConfigDict(extra="forbid")

    strategy: Strategy = "weighted_random"
    retries: int = Field(2, ge=0, le=10)
    backoff: float = Field(0.25, ge=0)
    backoff_max: float = Field(4.0, ge=0)
    max_retry_after: float = Field(10.0, ge=0)
    cooldown: CooldownConfig = Field(default_factory=CooldownConfig)
    health_interval: float = Field(30.0, ge=0)  # seconds between backend health checks; 0: off


class DeploymentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: str = Field(min_length=1)  # <backend>/<model>, or a model served by one backend
    weight: float = Field(1.0, gt=0)
    priority: int = Field(0, ge=0)  # lower first; higher ones only when all lower ones failed


class ModelConfig(BaseModel):
    """A ``models:`` entry: one client-facing name served by several deployments.

    .. code-block:: yaml

        timeouts: {connect: 10, first_byte: 600, idle: 120, total: 3600}   # global
        routing:                      # defaults for every model
          strategy: weighted_random   # weighted_random | least_busy | lowest_latency
          retries: 2                  # further attempts once every deployment had one
          backoff: 0.25               # seconds before the first retry; doubles, with jitter
          backoff_max: 4
          max_retry_after: 10         # wait for an upstream's retry-after up to this; else move on
          cooldown: {failures: 3, window: 60, period: 30}   # N failures in window s: skip for period s
          health_interval: 30         # background Backend.health() checks; 0: off
        models:
          - name: llama               # what clients ask for
            strategy: least_busy
            deployments:
              - {target: ollama-a/llama3.2, weight: 2, priority: 0}
              - ollama-b/llama3.2                      # just a target: weight 1, priority 0
              - {target: openai/gpt-4o-mini, priority: 1}   # only when no priority-0 one can
            fallbacks: [bigger-model]  # names (models:, aliases, <backend>/<model>) tried after
            timeouts: {first_byte: 60, total: 300}  # the rest from the global timeouts
            retries: 1

    ``aliases:`` stay ordered fallback lists: each of their targets (a ``models:`` name, an alias,
    or a concrete model) is tried in turn. A name is either a model here or an alias, not both.
    How a route is walked: ``dragoman.gateway.registry`` and ``dragoman.gateway.router``.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    deployments: list[DeploymentConfig] = Field(min_length=1)
    strategy: Strategy | None = None
    fallbacks: list[str] = Field(default_factory=list)
    timeouts: PartialTimeoutConfig | None = None
    retries: int | None = Field(None, ge=0, le=10)

    @field_validator("deployments", mode="before")
    @classmethod
    def _plain_targets(cls, value: Any) -> Any:
        """A deployment may be written as just its target."""
        if isinstance(value, list):
            return [{"target": item} if isinstance(item, str) else item for item in value]
        return value

    @model_validator(mode="after")
    def _no_self_fallback(self) -> ModelConfig:
        if self.name in self.fallbacks:
            raise ValueError(f"model {self.name!r} lists itself among its fallbacks")
        return self


class BackendEntry(BaseModel):
    """``name`` and ``type`` here; the rest is validated by the backend's own settings model."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(pattern=r"^[A-Za-z0-9_.:-]+$")
    type: str

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class OverrideConfig(BaseModel):
    """Per-model-glob parameters: defaults a request may override, ``force`` values it may not."""

    model_config = ConfigDict(extra="allow")

    force: dict[str, Any] = Field(default_factory=dict)
    max_tokens_cap: int | None = Field(None, ge=1)
    exclude_reasoning: bool | None = None
    request_timeout: float | None = Field(None, gt=0)  # seconds: the request's total time limit
    # A model without tool support: "error" (a 400, the default) or "drop" (tools left out, said in
    # the x-dragoman-dropped-tools header).
    tools: Literal["error", "drop"] | None = None
    # A prompt longer than the model's window: "error" (the default) or "truncate_oldest".
    context: Literal["error", "truncate_oldest"] | None = None

    @property
    def defaults(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class StaticKeyConfig(BaseModel):
    """An ``auth.keys`` entry: a key chosen by the operator, with the same fields as a generated one.

    It is hashed when the gateway starts and never written to the database; the admin UI and
    ``dragoman keys list`` show it as set in the configuration (change it there).
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    key: SecretStr
    models: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    rpm: PositiveInt | None = None
    tpm: PositiveInt | None = None
    max_parallel: PositiveInt | None = None
    budget_tokens: PositiveInt | None = None
    budget_cost: PositiveFloat | None = None
    budget_period: Literal["day", "month"] | None = None
    expires_at: datetime | None = None
    enabled: bool = True
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("key")
    @classmethod
    def _strong_enough(cls, key: SecretStr) -> SecretStr:
        problem = static_key_problem(key.get_secret_value())
        if problem:
            raise ValueError(problem)
        return key

    @model_validator(mode="after")
    def _budget_has_period(self) -> StaticKeyConfig:
        if (self.budget_tokens is not None or self.budget_cost is not None) and self.budget_period is None:
            raise ValueError("a token or cost budget needs budget_period (day or month)")
        return self

    def key_fields(self) -> dict[str, Any]:
        """The key's settings as the key service takes them (everything but the secret)."""
        return self.model_dump(exclude={"key"})


def static_key_problem(key: str) -> str | None:
    """Why ``key`` cannot be a static key (never quoting it), or None."""
    if len(key) < MIN_STATIC_KEY_LENGTH:
        return (f"the key is {len(key)} characters long; a chosen key needs at least {MIN_STATIC_KEY_LENGTH} "
                f"(make one with: openssl rand -hex 24)")
    if len(key) > MAX_STATIC_KEY_LENGTH:
        return f"the key is {len(key)} characters long; at most {MAX_STATIC_KEY_LENGTH} are accepted"
    if any(c.isspace() or not c.isprintable() for c in key):
        return "the key contains spaces or control characters (a stray newline from a file?)"
    return None


class AuthConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Defaults to keys when ``keys`` are configured, else none.
    mode: Literal["none", "keys", "forward"] = "none"
    cache_ttl: float = Field(5.0, ge=0)
    admin_password: str | None = None
    session_secret: str | None = None
    keys: list[StaticKeyConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _keys_imply_key_mode(self) -> AuthConfig:
        if not self.keys:
            return self
        if "mode" not in self.model_fields_set:
            self.mode = "keys"
        elif self.mode != "keys":
            raise ValueError(f"static keys (auth.keys, --api-key, DRAGOMAN_API_KEY) need auth.mode: keys, "
                             f"not {self.mode!r} (or leave mode out)")
        names = [k.name for k in self.keys]
        if len(set(names)) != len(names):
            raise ValueError(f"keys: name {next(n for n in names if names.count(n) > 1)!r} is used twice")
        secrets = [k.key.get_secret_value() for k in self.keys]
        if len(set(secrets)) != len(secrets):
            raise ValueError("keys: two keys have the same secret")
        return self


class MetricsConfig(BaseModel):
    """``metrics:``: who may read ``/metrics`` and ``/health/ready`` (``/health`` is always open).

    ``none``: anyone; ``key``: any valid dragoman key (or the admin password) as a bearer;
    ``admin``: the admin password only. Unset: ``key`` under ``auth.mode: keys``, else ``none``.
    """

    model_config = ConfigDict(extra="forbid")

    auth: Literal["none", "key", "admin"] | None = None


class UsageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    retention_days: int = Field(90, ge=1)
    queue_size: int = Field(10000, ge=1)
    flush_interval: float = Field(1.0, gt=0)
    batch_size: int = Field(500, ge=1)


class RedisConfig(BaseModel):
    """``redis:``: a URL, or a mapping with the URL and the connection pool's size.

    Each instance keeps two pools of ``max_connections`` (limits and keys; cooldowns). A burst
    waits up to ``pool_wait`` seconds for a free connection, so it is never taken for Redis
    being down; a request still waiting then gets a 503 of its own.
    """

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1)
    max_connections: int = Field(32, ge=4)
    pool_wait: float = Field(2.0, gt=0)


class ModelLimitsConfig(BaseModel):
    """One entry of ``limits.models``: what all callers of the matching models share."""

    model_config = ConfigDict(extra="forbid")

    rpm: int | None = Field(None, gt=0)
    tpm: int | None = Field(None, gt=0)
    max_parallel: int | None = Field(None, gt=0)


class LimitsConfig(BaseModel):
    """``limits:``: how keys' limits and budgets behave (see ``dragoman.gateway.limits``)."""

    model_config = ConfigDict(extra="forbid")

    # While Redis is unreachable: ``open`` admits requests without limits (logged), ``closed``
    # refuses them with a 503.
    redis_failure: Literal["open", "closed"] = "open"
    # Answer tokens a budgeted request reserves when the client sets no max_tokens; per model glob
    # (first match) in reserve_tokens_by_model.
    reserve_tokens: int = Field(1024, ge=0)
    reserve_tokens_by_model: dict[str, int] = Field(default_factory=dict)
    # Limits every caller of the matching models shares (model glob, first match), e.g. to stay
    # under an upstream's quota or a local model's capacity; on top of each key's own.
    models: dict[str, ModelLimitsConfig] = Field(default_factory=dict)

    @field_validator("reserve_tokens_by_model")
    @classmethod
    def _whole_tokens(cls, value: dict[str, int]) -> dict[str, int]:
        for glob, tokens in value.items():
            if tokens < 0:
                raise ValueError(f"{glob}: a reservation is a number of tokens >= 0, not {tokens}")
        return value


class ImageFetchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    allow_hosts: list[str] = Field(default_factory=list)  # globs; empty = any public host
    max_bytes: int = Field(20 * 1024 * 1024, ge=1)
    timeout: float = Field(10.0, gt=0)
    allow_private: bool = False  # only for trusted networks and tests


class ResponsesConfig(BaseModel):
    """The Responses API (``/v1/responses``): hosted tools for models that cannot run them, and the
    stored responses behind ``previous_response_id`` and ``GET /v1/responses/{id}`` (kept in the
    database for ``retention_days``; one larger than ``max_response_bytes`` is answered, not kept)."""

    model_config = ConfigDict(extra="forbid")

    hosted_tools: Literal["drop", "reject"] = "drop"
    retention_days: float = Field(30, gt=0)
    max_response_bytes: int = Field(16 << 20, ge=1024)
    # ``background: true`` responses generating at once in one process; more are a 429.
    max_background: int = Field(64, ge=0)


class PullConfig(BaseModel):
    """``POST /api/pull``: ``backend`` receives names without a ``<backend>/`` prefix (unset:
    ``hf.co/...`` names go to the first llamacpp backend, others to the first ollama backend)."""

    model_config = ConfigDict(extra="forbid")

    backend: str | None = None


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    server: ServerConfig = Field(default_factory=ServerConfig)
    backends: list[BackendEntry] = Field(default_factory=list)
    aliases: dict[str, str | list[str]] = Field(default_factory=dict)
    overrides: dict[str, OverrideConfig] = Field(default_factory=dict)
    timeouts: TimeoutConfig = Field(default_factory=TimeoutConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    models: list[ModelConfig] = Field(default_factory=list)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    database: str | None = None
    # Seconds a request waits on the database (a key not in the cache, a budget's first figure)
    # before it answers from the key cache or with a 503.
    database_timeout: float = Field(1.0, gt=0)
    redis: RedisConfig | None = None
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    usage: UsageConfig = Field(default_factory=UsageConfig)
    prices: dict[str, dict[str, float]] = Field(default_factory=dict)
    images: ImageFetchConfig = Field(default_factory=ImageFetchConfig)
    responses: ResponsesConfig = Field(default_factory=ResponsesConfig)
    model_refresh_seconds: float = Field(60.0, gt=0)
    pull: PullConfig = Field(default_factory=PullConfig)
    data_dir: Path | None = None  # writable state; see resolve_data_dir

    # Where the file was; relative paths (database, GGUF files) resolve against its folder.
    source: Path | None = Field(default=None, exclude=True)
    # The environment variables that changed this config (names only), for ``dragoman config show``.
    _environment: list[str] = PrivateAttr(default_factory=list)

    @property
    def environment(self) -> list[str]:
        return self._environment

    # The environment ``${VAR}`` references were resolved from, and the backends as written in the
    # file (before interpolation): secrets from the environment are stored as their reference.
    _environ: Mapping[str, str] = PrivateAttr(default_factory=lambda: os.environ)
    _written_backends: list[Any] = PrivateAttr(default_factory=list)
    _data_location: DataDir | None = PrivateAttr(default=None)

    @field_validator("redis", mode="before")
    @classmethod
    def _redis_url(cls, value: Any) -> Any:
        """``redis: redis://host:6379/0`` is short for ``redis: {url: redis://host:6379/0}``; an empty
        string (``${REDIS_URL:-}`` unset) means no Redis."""
        if isinstance(value, str):
            return {"url": value} if value else None
        return value

    @field_validator("backends")
    @classmethod
    def _unique_names(cls, backends: list[BackendEntry]) -> list[BackendEntry]:
        seen: set[str] = set()
        for entry in backends:
            if entry.name in seen:
                raise ValueError(f"backend name {entry.name!r} is used twice")
            seen.add(entry.name)
        return backends

    @model_validator(mode="after")
    def _unique_models(self) -> Config:
        seen: set[str] = set()
        for model in self.models:
            if model.name in seen:
                raise ValueError(f"models: name {model.name!r} is used twice")
            if model.name in self.aliases:
                raise ValueError(f"models: name {model.name!r} is also an alias; use one or the other")
            seen.add(model.name)
        return self

    @property
    def config_dir(self) -> Path:
        return self.source.parent if self.source else Path.cwd()

    def resolve_data_dir(self, environ: Mapping[str, str]) -> DataDir:
        """Settle the data directory from the file's ``data_dir``, ``environ`` and the file's place."""
        self._data_location = resolve_data_dir(self.data_dir, self.source, environ)
        return self._data_location

    @property
    def data_location(self) -> DataDir:
        """The data directory (resolved from the process environment if :func:`load_config` did not)."""
        return self._data_location or self.resolve_data_dir(os.environ)

    def writable_data_dir(self) -> Path:
        """The data directory, created if missing; a :class:`ConfigError` (one line naming the path and
        the setting that chose it) when dragoman cannot write there."""
        location = self.data_location
        try:
            location.path.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=location.path):
                pass
        except OSError as exc:
            raise ConfigError(f"cannot write to the data directory {location.path}: {exc.strerror or exc} "
                              f"({location.origin})") from exc
        return location.path

    def checked_database_url(self) -> str:
        """:attr:`database_url`, after making sure the default SQLite file's directory is writable."""
        if not self.database:
            self.writable_data_dir()
        return self.database_url

    @property
    def database_url(self) -> str:
        """SQLAlchemy URL: ``dragoman.db`` in the data directory unless ``database`` is set."""
        if self.database:
            url = self.database
            if url.startswith(("postgres://", "postgresql://")):
                url = "postgresql+asyncpg://" + url.split("://", 1)[1]
            elif url.startswith("sqlite:///") and "+aiosqlite" not in url:
                url = "sqlite+aiosqlite:///" + url[len("sqlite:///"):]
            return url
        return f"sqlite+aiosqlite:///{(self.data_location.path / DATABASE_FILE).resolve()}"

    @property
    def redis_url(self) -> str | None:
        return self.redis.url if self.redis is not None else None

    @property
    def metrics_auth(self) -> Literal["none", "key", "admin"]:
        if self.metrics.auth is not None:
            return self.metrics.auth
        return "key" if self.auth.mode == "keys" else "none"

    @property
    def environ(self) -> Mapping[str, str]:
        return self._environ

    def written_backend(self, index: int) -> dict[str, Any]:
        """``backends[index]`` as the file wrote it, ``${VAR}`` references intact ({} when unknown)."""
        written = self._written_backends[index] if index < len(self._written_backends) else None
        return dict(written) if isinstance(written, dict) else {}


def default_data(*, local_model: bool) -> dict[str, Any]:
    """What ``dragoman serve`` runs with no config: the built-in local model (when installed) and echo."""
    backends: list[dict[str, Any]] = []
    if local_model:
        backends.append({"name": "local", "type": "llamacpp",
                         "models": [{"name": "gemma3:270m", "path": "builtin:gemma3-270m"}]})
    backends.append({"name": "echo", "type": "echo", "models": ["echo"]})
    return {"backends": backends}  # the database: dragoman.db in the data directory


def default_config(*, local_model: bool) -> Config:
    return Config.model_validate(default_data(local_model=local_model))


def interpolate(value: Any, environ: Mapping[str, str], path: str = "") -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string of the parsed YAML."""
    if isinstance(value, str):
        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in environ:
                return environ[name]
            if default is not None:
                return default
            raise ConfigError(f"{path or 'value'}: environment variable {name} is not set")
        return _ENV_REFERENCE.sub(replace, value)
    if isinstance(value, dict):
        return {k: interpolate(v, environ, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, environ, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def has_env_reference(text: str) -> bool:
    """True when ``text`` holds a ``${VAR}`` reference."""
    return _ENV_REFERENCE.search(text) is not None


def plain_env_references(text: str, environ: Mapping[str, str]) -> bool:
    """True when ``text`` holds references, each to a variable that is set and none with a default
    (a ``${VAR:-default}`` may resolve to the default written in the file)."""
    matches = list(_ENV_REFERENCE.finditer(text))
    return bool(matches) and all(m.group(2) is None and m.group(1) in environ for m in matches)


def load_config(path: str | Path | None = None, *, environ: Mapping[str, str] | None = None,
                local_model: bool = False) -> Config:
    """Load ``path`` (or ``$DRAGOMAN_CONFIG``; with neither, the built-in default), then apply the
    environment variables of ``dragoman.envconfig`` on top."""
    from dragoman.envconfig import apply_environment  # here: it imports this module

    env = os.environ if environ is None else environ
    chosen = path or env.get("DRAGOMAN_CONFIG")
    file = Path(chosen).expanduser() if chosen else None
    data: dict[str, Any] | None = None
    written: list[Any] = []
    if file is not None:
        try:
            raw = _read(file)
            data = interpolate(raw, env)
        except ConfigError as exc:
            raise ConfigError(f"{file}: {exc}") from exc
        backends = raw.get("backends")
        written = list(backends) if isinstance(backends, list) else []
    # Errors in the variables name the variable; the file is not to blame for them.
    data, used = apply_environment(data, env, default=lambda: default_data(local_model=local_model))
    where = f"{file}" if file else "configuration"
    with_env = f" (with the environment variables {', '.join(used)})" if used else ""
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{where}{with_env}: {describe_validation_error(exc)}") from exc
    if not config.backends:  # a file needs one; a program that embeds dragoman may give its own in code
        raise ConfigError(f"{where}{with_env}: backends: at least one backend is required")
    if file is not None:
        config.source = file.resolve()
    if config.server.tls is not None:
        config.server.tls = config.server.tls.resolved(config.config_dir)
    config._environment = used
    config._environ = env
    config._written_backends = written
    config.resolve_data_dir(env)
    return config


def _read(file: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError("file not found") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("the top level must be a mapping of keys (server, backends, ...)")
    return raw
