"""Configuration from environment variables: the common setups with no file, or changes to one.

The variables are applied on top of the config file, or of the built-in default when there is no
file; ``dragoman serve``'s flags reach here as these same variables, so a flag wins over the
environment, which wins over the file. An empty variable counts as unset (``FOO=`` in a compose
file). The README's "Configuration from the environment" lists them; ``VARIABLES`` is that list.

Backend variables build, or change, the backend of the same name (``openai``, ``ollama``,
``anthropic``): with a config file that has such a backend, only the settings given are replaced;
otherwise the backend is added. With no file, backends from the environment replace the built-in
ones. The seed-style names (``OPENAI_API_BASE_URL``, ``OPENAI_ALLOWED_MODELS``, ``OLLAMA_URL``)
mean what they meant there: the base URL without ``/v1``, a comma-separated allow-list, and the
client's own key passed upstream; the ``DRAGOMAN_`` names win when both are set.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dragoman.config import ConfigError, static_key_problem
from dragoman.core.duration import parse_duration

DEFAULT_KEY_NAME = "default"  # the static key made from DRAGOMAN_API_KEY / --api-key
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")


@dataclass(frozen=True, slots=True)
class Variable:
    name: str
    meaning: str


VARIABLES: tuple[Variable, ...] = (
    Variable("DRAGOMAN_CONFIG", "the config file (like --config)"),
    Variable("DRAGOMAN_HOST", "server.host (--host)"),
    Variable("DRAGOMAN_PORT", "server.port (--port)"),
    Variable("DRAGOMAN_WORKERS", "server.workers: worker processes, a number or 'auto' (--workers)"),
    Variable("DRAGOMAN_LOG_LEVEL", "server.log_level: debug, info, warning or error (--log-level)"),
    Variable("DRAGOMAN_LOG_FORMAT", "server.log_format: text or json (--log-format)"),
    Variable("DRAGOMAN_SSL_CERTFILE", "server.tls.certfile (--ssl-certfile)"),
    Variable("DRAGOMAN_SSL_KEYFILE", "server.tls.keyfile (--ssl-keyfile)"),
    Variable("DRAGOMAN_FORWARDED_ALLOW_IPS", "server.forwarded_allow_ips, comma-separated (--forwarded-allow-ips)"),
    Variable("DRAGOMAN_API_KEY", "a static key named 'default' for every model; turns on auth.mode: keys (--api-key)"),
    Variable("DRAGOMAN_ADMIN_PASSWORD", "auth.admin_password"),
    Variable("DRAGOMAN_KEEP_ALIVE", "keep_alive of every llamacpp backend: idle time before a local model is "
                                    "unloaded ('5m', '1h', seconds; -1 never), as OLLAMA_KEEP_ALIVE"),
    Variable("DRAGOMAN_DATABASE_URL", "database"),
    Variable("DRAGOMAN_REDIS_URL", "redis"),
    Variable("DRAGOMAN_OPENAI_BASE_URL", "backend 'openai' (type openai): base_url, with /v1"),
    Variable("DRAGOMAN_OPENAI_API_KEY", "backend 'openai': api_key (unset: the client's own key is passed on)"),
    Variable("DRAGOMAN_OPENAI_MODELS", "backend 'openai': models, comma-separated names or globs"),
    Variable("DRAGOMAN_OLLAMA_URL", "backend 'ollama' (type ollama): base_url"),
    Variable("DRAGOMAN_OLLAMA_MODELS", "backend 'ollama': models, comma-separated names or globs"),
    Variable("DRAGOMAN_ANTHROPIC_API_KEY", "backend 'anthropic' (type anthropic): api_key"),
    Variable("DRAGOMAN_ANTHROPIC_BASE_URL", "backend 'anthropic': base_url"),
    Variable("DRAGOMAN_ANTHROPIC_MODELS", "backend 'anthropic': models, comma-separated names or globs"),
    Variable("OPENAI_API_BASE_URL", "seed style: backend 'openai', base URL without /v1 (it is added)"),
    Variable("OPENAI_ALLOWED_MODELS", "seed style: backend 'openai': models, comma-separated"),
    Variable("OLLAMA_URL", "seed style: backend 'ollama': base_url"),
)


@dataclass(frozen=True, slots=True)
class _BackendVariables:
    name: str  # the backend's name and type
    url: tuple[str, ...]  # the variables for base_url, strongest first
    api_key: str | None
    models: tuple[str, ...]
    defaults: Mapping[str, Any]  # for a backend the environment adds (not for one it changes)


_BACKENDS = (
    _BackendVariables("openai", ("DRAGOMAN_OPENAI_BASE_URL", "OPENAI_API_BASE_URL"), "DRAGOMAN_OPENAI_API_KEY",
                      ("DRAGOMAN_OPENAI_MODELS", "OPENAI_ALLOWED_MODELS"),
                      {"base_url": "https://api.openai.com/v1", "api_key": "forward"}),
    _BackendVariables("ollama", ("DRAGOMAN_OLLAMA_URL", "OLLAMA_URL"), None, ("DRAGOMAN_OLLAMA_MODELS",), {}),
    _BackendVariables("anthropic", ("DRAGOMAN_ANTHROPIC_BASE_URL",), "DRAGOMAN_ANTHROPIC_API_KEY",
                      ("DRAGOMAN_ANTHROPIC_MODELS",), {"api_key": "forward"}),
)


class _Overlay:
    """Reads the variables of one environment and records which of them were used."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.used: list[str] = []

    def get(self, *names: str) -> tuple[str, str] | None:
        """(name, value) of the first of ``names`` that is set and not empty."""
        for name in names:
            value = self.env.get(name, "").strip()
            if value:
                self.used.append(name)
                return name, value
        return None

    def value(self, name: str) -> str | None:
        found = self.get(name)
        return None if found is None else found[1]


def apply_environment(data: dict[str, Any] | None, env: Mapping[str, str], *,
                      default: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], list[str]]:
    """``data`` (the parsed file, or None for no file) with the variables applied, and the names
    of the variables that were used. Raises ``ConfigError`` naming the variable at fault."""
    overlay = _Overlay(env)
    out = copy.deepcopy(data) if data is not None else default()
    _server(out, overlay)
    _auth(out, overlay)
    for name, path in (("DRAGOMAN_DATABASE_URL", "database"), ("DRAGOMAN_REDIS_URL", "redis")):
        value = overlay.value(name)
        if value is not None:
            out[path] = value
    backends = [b for spec in _BACKENDS if (b := _backend(spec, overlay)) is not None]
    if backends:
        if data is None:
            out["backends"] = []  # no file: the environment's backends replace the built-in ones
        _merge_backends(out, backends)
    _keep_alive(out, overlay)
    return out, list(dict.fromkeys(overlay.used))


def _keep_alive(data: dict[str, Any], overlay: _Overlay) -> None:
    value = overlay.value("DRAGOMAN_KEEP_ALIVE")
    if value is None:
        return
    try:
        parse_duration(value)
    except ValueError as exc:
        raise ConfigError(f"DRAGOMAN_KEEP_ALIVE: {exc}") from exc
    for backend in data.get("backends") or []:
        if isinstance(backend, dict) and backend.get("type") == "llamacpp":
            backend["keep_alive"] = value


def _section(data: dict[str, Any], key: str, variable: str) -> dict[str, Any]:
    section = data.get(key)
    if section is None:
        section = data[key] = {}
    if not isinstance(section, dict):
        raise ConfigError(f"{variable}: cannot apply it: {key!r} in the config file is not a mapping")
    return section


def _server(data: dict[str, Any], overlay: _Overlay) -> None:
    host = overlay.value("DRAGOMAN_HOST")
    if host is not None:
        _section(data, "server", "DRAGOMAN_HOST")["host"] = host
    port = overlay.value("DRAGOMAN_PORT")
    if port is not None:
        if not port.isdigit() or int(port) > 65535:
            raise ConfigError(f"DRAGOMAN_PORT: {port!r} is not a port number (0-65535)")
        _section(data, "server", "DRAGOMAN_PORT")["port"] = int(port)
    workers = overlay.value("DRAGOMAN_WORKERS")
    if workers is not None:
        if workers != "auto" and not workers.isdigit():
            raise ConfigError(f"DRAGOMAN_WORKERS: {workers!r} is not a number of workers or 'auto'")
        _section(data, "server", "DRAGOMAN_WORKERS")["workers"] = workers if workers == "auto" else int(workers)
    level = overlay.value("DRAGOMAN_LOG_LEVEL")
    if level is not None:
        if level.lower() not in LOG_LEVELS:
            raise ConfigError(f"DRAGOMAN_LOG_LEVEL: {level!r} is not one of {', '.join(LOG_LEVELS)}")
        _section(data, "server", "DRAGOMAN_LOG_LEVEL")["log_level"] = level.lower()
    log_format = overlay.value("DRAGOMAN_LOG_FORMAT")
    if log_format is not None:
        if log_format.lower() not in LOG_FORMATS:
            raise ConfigError(f"DRAGOMAN_LOG_FORMAT: {log_format!r} is not one of {', '.join(LOG_FORMATS)}")
        _section(data, "server", "DRAGOMAN_LOG_FORMAT")["log_format"] = log_format.lower()
    proxies = overlay.value("DRAGOMAN_FORWARDED_ALLOW_IPS")
    if proxies is not None:
        server = _section(data, "server", "DRAGOMAN_FORWARDED_ALLOW_IPS")
        server.pop("trusted_proxies", None)
        server["forwarded_allow_ips"] = proxies  # split and checked by the config model
    certfile, keyfile = overlay.value("DRAGOMAN_SSL_CERTFILE"), overlay.value("DRAGOMAN_SSL_KEYFILE")
    if keyfile is not None and certfile is None:
        raise ConfigError("DRAGOMAN_SSL_KEYFILE (--ssl-keyfile) needs DRAGOMAN_SSL_CERTFILE (--ssl-certfile) too")
    if certfile is not None:
        server = _section(data, "server", "DRAGOMAN_SSL_CERTFILE")
        old = server.get("tls")
        old = old if isinstance(old, dict) else {}
        # Paths from the environment or a flag are relative to the working directory, not the file.
        tls: dict[str, Any] = {"certfile": str(Path(certfile).expanduser().resolve())}
        if keyfile is not None:
            tls["keyfile"] = str(Path(keyfile).expanduser().resolve())
        if old.get("ca_certs"):
            tls["ca_certs"] = old["ca_certs"]
        server["tls"] = tls


def _auth(data: dict[str, Any], overlay: _Overlay) -> None:
    password = overlay.value("DRAGOMAN_ADMIN_PASSWORD")
    if password is not None:  # secrets belong in the environment: it wins over auth.admin_password
        _section(data, "auth", "DRAGOMAN_ADMIN_PASSWORD")["admin_password"] = password
    key = overlay.value("DRAGOMAN_API_KEY")
    if key is not None:
        problem = static_key_problem(key)
        if problem:
            raise ConfigError(f"DRAGOMAN_API_KEY (--api-key): {problem}")
        auth = _section(data, "auth", "DRAGOMAN_API_KEY")
        keys = auth.get("keys")
        if keys is None:
            keys = auth["keys"] = []
        if not isinstance(keys, list):
            raise ConfigError("DRAGOMAN_API_KEY: cannot apply it: 'auth.keys' in the config file is not a list")
        # The one key of a single-user setup: it may also manage models (pull, create, delete).
        keys.append({"name": DEFAULT_KEY_NAME, "key": key, "metadata": {"admin": True}})


def _backend(spec: _BackendVariables, overlay: _Overlay) -> dict[str, Any] | None:
    """The settings the environment gives backend ``spec.name``, or None when it gives none."""
    settings: dict[str, Any] = {}
    url = overlay.get(*spec.url)
    if url is not None:
        name, value = url
        settings["base_url"] = _seed_base_url(value) if name == "OPENAI_API_BASE_URL" else value
    if spec.api_key is not None:
        key = overlay.value(spec.api_key)
        if key is not None:
            settings["api_key"] = key
    models = overlay.get(*spec.models)
    if models is not None:
        settings["models"] = [m.strip() for m in models[1].split(",") if m.strip()] or ["*"]
    if not settings:
        return None
    return {"name": spec.name, "type": spec.name, **settings}


def _seed_base_url(url: str) -> str:
    """The seed appended ``/v1/...`` itself; dragoman's base URLs include ``/v1``."""
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def _merge_backends(data: dict[str, Any], backends: list[dict[str, Any]]) -> None:
    existing = data.get("backends")
    if existing is None:
        existing = data["backends"] = []
    if not isinstance(existing, list):
        raise ConfigError("backend variables: cannot apply them: 'backends' in the config file is not a list")
    for backend in backends:
        name = backend["name"]
        current = next((b for b in existing if isinstance(b, dict) and b.get("name") == name), None)
        if current is None:
            spec = next(s for s in _BACKENDS if s.name == name)
            existing.append({**backend, **{k: v for k, v in spec.defaults.items() if k not in backend}})
        elif current.get("type") != backend["type"]:
            raise ConfigError(f"the {name.upper()} backend variables change the backend named {name!r}, but "
                              f"the config file's {name!r} has type {current.get('type')!r}, not {backend['type']!r}")
        else:
            current.update({k: v for k, v in backend.items() if k not in ("name", "type")})
