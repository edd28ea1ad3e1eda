"""Configuration: a YAML file with ``${VAR}`` interpolation, validated by pydantic.

The spellings of ``server``, ``backends`` (``name``, ``type``, ``base_url``, ``api_key``,
``models``) are a contract outside tools rely on. A broken file fails at start with a
:class:`ConfigError` naming the file, the key and what is wrong, never a traceback.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 11435
DATA_DIR_ENV = "DRAGOMAN_DATA_DIR"
DATABASE_FILE = "dragoman.db"
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """A configuration problem, phrased for the person who wrote the file."""


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
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Reverse proxies whose X-Forwarded-For/-Proto are believed (client IPs for throttling, https
    # for Secure cookies). Empty: none, and the headers are not even parsed.
    trusted_proxies: list[str] = Field(default_factory=list)


class TimeoutConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    connect: float = Field(10.0, gt=0)
    first_byte: float = Field(600.0, gt=0)
    idle: float = Field(120.0, gt=0)


class PartialTimeoutConfig(BaseModel):
    """A model's own timeouts; what is left out comes from the global ``timeouts:``."""

    model_config = ConfigDict(extra="forbid")

    connect: float | None = Field(None, gt=0)
    first_byte: float | None = Field(None, gt=0)
    idle: float | None = Field(None, gt=0)


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

        timeouts: {connect: 10, first_byte: 600, idle: 120}   # global
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
            timeouts: {first_byte: 60} # the rest from the global timeouts
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
    request_timeout: float | None = Field(None, gt=0)

    @property
    def defaults(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class AuthConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["none", "keys", "forward"] = "none"
    cache_ttl: float = Field(5.0, ge=0)
    admin_password: str | None = None
    session_secret: str | None = None


class UsageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    retention_days: int = Field(90, ge=1)
    queue_size: int = Field(10000, ge=1)
    flush_interval: float = Field(1.0, gt=0)
    batch_size: int = Field(500, ge=1)


class ImageFetchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    allow_hosts: list[str] = Field(default_factory=list)  # globs; empty = any public host
    max_bytes: int = Field(20 * 1024 * 1024, ge=1)
    timeout: float = Field(10.0, gt=0)
    allow_private: bool = False  # only for trusted networks and tests


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
    database: str | None = None
    redis: str | None = None
    usage: UsageConfig = Field(default_factory=UsageConfig)
    prices: dict[str, dict[str, float]] = Field(default_factory=dict)
    images: ImageFetchConfig = Field(default_factory=ImageFetchConfig)
    model_refresh_seconds: float = Field(60.0, gt=0)
    data_dir: Path | None = None  # writable state; see resolve_data_dir

    # Where the file was; relative paths (GGUF files, data_dir) resolve against its folder.
    source: Path | None = Field(default=None, exclude=True)
    _data_location: DataDir | None = PrivateAttr(default=None)

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
    def _has_backends(self) -> Config:
        if not self.backends:
            raise ValueError("at least one backend is required")
        return self

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
        return self.redis


def default_config(*, local_model: bool) -> Config:
    """What ``dragoman serve`` runs with no config: the built-in local model (when installed) and echo."""
    backends: list[dict[str, Any]] = []
    if local_model:
        backends.append({"name": "local", "type": "llamacpp",
                         "models": [{"name": "gemma3:270m", "path": "builtin:gemma3-270m"}]})
    backends.append({"name": "echo", "type": "echo", "models": ["echo"]})
    return Config.model_validate({"backends": backends})


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


def describe_validation_error(exc: ValidationError, prefix: str = "") -> str:
    lines = []
    for error in exc.errors():
        location = prefix
        for part in error["loc"]:
            location += f"[{part}]" if isinstance(part, int) else (f".{part}" if location else str(part))
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"{location or '(top level)'}: {message}")
    return "; ".join(lines)


def load_config(path: str | Path | None = None, *, environ: Mapping[str, str] | None = None,
                local_model: bool = False) -> Config:
    """Load ``path`` (or ``$DRAGOMAN_CONFIG``); with neither, the built-in default."""
    env = os.environ if environ is None else environ
    chosen = path or env.get("DRAGOMAN_CONFIG")
    if not chosen:
        config = default_config(local_model=local_model)
        config.resolve_data_dir(env)
        return _from_environment(config, env)
    file = Path(chosen).expanduser()
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{file}: file not found") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read: {exc.strerror}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: the top level must be a mapping of keys (server, backends, ...)")
    try:
        data = interpolate(raw, env)
        config = Config.model_validate(data)
    except ConfigError as exc:
        raise ConfigError(f"{file}: {exc}") from exc
    except ValidationError as exc:
        raise ConfigError(f"{file}: {describe_validation_error(exc)}") from exc
    config.source = file.resolve()
    config.resolve_data_dir(env)
    return _from_environment(config, env)


def _from_environment(config: Config, env: Mapping[str, str]) -> Config:
    """``DRAGOMAN_ADMIN_PASSWORD`` wins over ``auth.admin_password`` (secrets belong in the environment)."""
    password = env.get("DRAGOMAN_ADMIN_PASSWORD")
    if password:
        config.auth.admin_password = password
    return config
