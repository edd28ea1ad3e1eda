"""What every backend implements: canonical request in, canonical events out."""

from __future__ import annotations

import asyncio
import builtins
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Coroutine
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict

from dragoman.core.events import Event
from dragoman.core.models import ModelInfo
from dragoman.core.types import ChatRequest, EmbeddingRequest, EmbeddingResponse, Tokenized
from dragoman.errors import DeadlineExceeded, ErrorKind, GatewayError

T = TypeVar("T")

DEFAULT_TOTAL_TIMEOUT = 3600.0  # an hour: room for long local generations, an end for endless streams

TimeoutName = Literal["connect", "first_byte", "idle", "total"]
TIMEOUT_NAMES: tuple[TimeoutName, ...] = ("connect", "first_byte", "idle", "total")
_LIMIT_NAMES: dict[str, str] = {"connect": "connect", "first_byte": "first-byte", "idle": "idle", "total": "total"}


@dataclass(slots=True, frozen=True)
class Timeouts:
    """Seconds. ``first_byte`` bounds the wait for the upstream's first byte of an answer,
    ``idle`` the gap between two chunks of it; ``total`` bounds the whole request from its
    arrival (routing, retries and the answer), so an answer that keeps coming still ends.

    ``origins`` names the setting of each limit that does not come from the global
    ``timeouts:`` (``models[llama].timeouts.total``...), for the error that limit causes."""

    connect: float = 10.0
    first_byte: float = 600.0
    idle: float = 120.0
    total: float = DEFAULT_TOTAL_TIMEOUT
    origins: tuple[tuple[TimeoutName, str], ...] = field(default=(), compare=False)

    def setting(self, name: TimeoutName) -> str:
        """The config key that set limit ``name``."""
        return dict(self.origins).get(name, f"timeouts.{name}")

    def limit(self, name: TimeoutName) -> str:
        """``first-byte timeout of 5s, timeouts.first_byte``: which limit, its value and where it is set."""
        seconds: float = getattr(self, name)
        return f"{_LIMIT_NAMES[name]} timeout of {seconds:g}s, {self.setting(name)}"

    def with_limit(self, name: TimeoutName, seconds: float, origin: str) -> Timeouts:
        """These timeouts with limit ``name`` set to ``seconds`` by the setting ``origin``."""
        origins = (*((n, o) for n, o in self.origins if n != name), (name, origin))
        return replace(self, **{name: seconds}, origins=origins)


def total_exceeded(timeouts: Timeouts) -> DeadlineExceeded:
    return DeadlineExceeded(f"request timed out ({timeouts.limit('total')})")


@dataclass(slots=True)
class CallOptions:
    """Per-call settings the gateway passes down.

    ``deadline`` is the event-loop time (``loop.time()``) by which the whole request must be
    over, ``timeouts.total`` after it arrived; None when the caller set none. A backend that
    waits (for a connection, a chunk, a token) waits no later than that, and then raises
    ``total_exceeded(timeouts)``."""

    timeouts: Timeouts = field(default_factory=Timeouts)
    client_api_key: str | None = None  # for ``api_key: forward``
    deadline: float | None = None


async def within_deadline(work: Awaitable[T], options: CallOptions) -> T:
    """``work``, ended by the request's total deadline: ``DeadlineExceeded`` then (also when the
    deadline passed before it started, as after a retry's backoff)."""
    deadline = options.deadline
    if deadline is None:
        return await work
    if asyncio.get_running_loop().time() >= deadline:
        if isinstance(work, Coroutine):
            work.close()
        raise total_exceeded(options.timeouts)
    timeout = asyncio.timeout_at(deadline)
    try:
        async with timeout:
            return await work
    except TimeoutError:
        if timeout.expired():
            raise total_exceeded(options.timeouts) from None
        raise


class ImageFetcher(Protocol):
    """Fetches an http(s) image URL safely (SSRF rules in DESIGN.md); returns (bytes, media type)."""

    async def fetch(self, url: str) -> tuple[bytes, str]: ...


@dataclass(slots=True, frozen=True)
class Requirement:
    """An optional package that one setting needs, by import name (``dragoman.extras`` knows which
    extra installs it); ``reason`` says how the setting asks for it: "is set", "is llamacpp"."""

    setting: str
    reason: str
    module: str


@dataclass(slots=True)
class BackendDeps:
    """What the app hands every backend it builds."""

    config_dir: Path = field(default_factory=Path.cwd)
    image_fetcher: ImageFetcher | None = None


class NoSettings(BaseModel):
    """The settings of a backend that takes none besides ``name`` and ``type``."""

    model_config = ConfigDict(extra="forbid")


class Backend(ABC):
    """A configured upstream. Built by the app, started in its lifespan, closed on shutdown.

    Construction is typed: every backend class is built as ``cls(name, settings, deps)``, with
    ``settings`` an instance of its ``Settings`` model. Reading a config entry into that model is
    the backend types' work (:mod:`dragoman.backends.types`), so a backend never sees raw config;
    a program that embeds dragoman builds one the same way, without a config entry at all.
    ``__init__`` may raise ``ValueError`` for settings that are valid alone but not together.
    """

    type: ClassVar[str] = ""
    Settings: ClassVar[builtins.type[BaseModel]] = NoSettings  # builtins: `type` names the config type here

    def __init__(self, name: str, settings: BaseModel, deps: BackendDeps) -> None:
        self.name = name

    def requirements(self) -> list[Requirement]:
        """The optional packages this configured backend needs, checked before it starts
        (settings relative to the backend's entry, e.g. ``models[0].path``)."""
        return []

    async def start(self) -> None:
        """Open pools; must not fail when the upstream is down (discovery retries later)."""

    async def aclose(self) -> None:
        """Close pools and stop background work."""

    @abstractmethod
    async def list_models(self) -> list[ModelInfo]:
        """The models this backend serves now (discovered and filtered by the allow-list)."""

    @abstractmethod
    def stream(self, request: ChatRequest, model: str, options: CallOptions) -> AsyncIterator[Event]:
        """Stream the answer. Raise ``GatewayError`` before the first event for failures the
        router may retry; after it, raise ``GatewayError`` (the gateway turns it into a
        ``StreamError``). Closing the iterator must cancel the upstream work. An answer the
        upstream ended without its protocol's finish is an ``UPSTREAM_ERROR``, never a normal
        end; no wait lasts past ``options.deadline``."""

    async def embed(self, request: EmbeddingRequest, model: str, options: CallOptions) -> EmbeddingResponse:
        raise GatewayError(ErrorKind.INVALID_REQUEST, f"backend {self.name!r} does not serve embeddings",
                           param="model")

    async def count_tokens(self, request: ChatRequest, model: str) -> int | None:
        """Exact prompt token count when the backend has a tokenizer, else None."""
        return None

    async def tokenize(self, request: ChatRequest, model: str, *, add_special: bool) -> Tokenized | None:
        """The exact token ids of the raw ``prompt`` or of the rendered ``messages``; None when this
        backend has no tokenizer to ask (the client gets a 400, never an estimate)."""
        return None

    async def detokenize(self, tokens: list[int], model: str) -> str | None:
        """The text of ``tokens``; None when this backend has no tokenizer to ask."""
        return None

    def loaded_models(self) -> dict[str, float]:
        """Models held in memory now -> unix time they unload if idle (local runtimes only)."""
        return {}

    async def health(self) -> str | None:
        """None when healthy, else a short reason."""
        return None

    async def probe(self) -> str | None:
        """Ask the upstream now, whatever is cached (``dragoman check``): None when it answers, else
        why not. The default is :meth:`health`, for backends whose check always asks."""
        return await self.health()
