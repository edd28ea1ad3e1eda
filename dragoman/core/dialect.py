"""The client-side seam: what a dialect is to the one generation handler.

A dialect is pure translation. It parses a wire body into canonical requests, encodes canonical
events into its wire frames (one :class:`FrameEncoder` per streamed answer), renders a whole
answer and a :class:`GatewayError`, and declares which ``POST`` paths are its generations. The
handler (:mod:`dragoman.serving.handler`) does everything else: the call's context and
credentials, the body read, the gateway call, the client's disconnect, the stream's lifetime.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from dragoman.core.accumulate import Accumulator
from dragoman.core.events import Event
from dragoman.core.service import CallContext, ChatStream
from dragoman.core.types import ChatRequest, ChatResponse
from dragoman.errors import GatewayError


class FrameEncoder(Protocol):
    """Canonical events in, wire bytes out; one per streamed answer (it keeps the answer's state)."""

    def encode(self, event: Event) -> bytes:
        """The frames for ``event`` (``b""`` when it writes nothing); a ``StreamError`` is the
        error after the first byte, in the dialect's in-stream shape."""

    def tail(self) -> bytes:
        """What follows the last event (OpenAI's ``[DONE]``), ``b""`` for nothing."""


@dataclass(slots=True, frozen=True)
class GenerationRoute:
    """A ``POST`` path the handler serves for a dialect; ``operation`` is passed back to ``parse``."""

    path: str
    operation: str


@dataclass(slots=True, frozen=True)
class WireError:
    """An error as the dialect answers it before the first byte."""

    status: int
    body: Any
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class Answer:
    """A whole answer the dialect knows without generating (Ollama's model load and unload, a
    Responses API background response), with its own ``headers``."""

    body: Any
    headers: Mapping[str, str] = field(default_factory=dict)


Starter = Callable[[ChatRequest, CallContext], Awaitable[ChatStream]]


@dataclass(slots=True)
class Generation:
    """One generation request, translated: what to run and how to answer it.

    ``requests`` run one after another (several for OpenAI's ``n`` and multi-prompt
    completions); a streamed answer has one ``encoder()`` for all of them. ``render`` builds the
    whole answer's body from their accumulated responses. ``headers`` join the call's (a header
    in both keeps both values, comma-separated). ``ping`` goes out whenever no event came for
    ``ping_interval`` seconds. ``start`` replaces the gateway's plain ``chat`` when the dialect
    retries a start (the Responses API's ``truncation: auto``). ``needed(i)`` is asked before
    request ``i`` (>= 1) starts, once the ones before it are answered: False skips it (a stream
    that carried several choices, ``MessageStart.choices``, answered it already). ``settle`` is
    awaited after the last event and before the answer's last bytes (a streamed answer's encoder
    ``tail``, a whole answer's body): the Responses API stores the answer there, so a client that
    chains right after finds it.
    """

    requests: Sequence[ChatRequest]
    encoder: Callable[[], FrameEncoder]
    render: Callable[[list[ChatResponse]], Any]
    media_type: str = "text/event-stream"
    headers: Mapping[str, str] = field(default_factory=dict)
    ping: bytes = b""
    ping_interval: float | None = None
    accumulator: Callable[[], Accumulator] = Accumulator
    start: Starter | None = None
    settle: Callable[[], Awaitable[None]] | None = None
    needed: Callable[[int], bool] | None = None

    @property
    def stream(self) -> bool:
        return self.requests[0].stream


class Dialect(Protocol):
    """A client dialect, as the app registers it (``create_app(config, dialects=...)``)."""

    name: str

    def generation_routes(self) -> Sequence[GenerationRoute]:
        """The ``POST`` paths whose requests are generations (served by the one handler)."""

    async def parse(self, operation: str, body: Any, headers: Mapping[str, str],
                    ctx: CallContext) -> Generation | Answer:
        """The request ``body`` (JSON) translated; ``GatewayError`` for a bad one."""

    def render_error(self, error: GatewayError, ctx: CallContext) -> WireError:
        """``error`` as this dialect answers it before the first byte."""

    def routes(self) -> Sequence[Any]:
        """The dialect's other endpoints (Starlette routes: models, embeddings...), served as given."""
