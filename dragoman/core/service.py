"""The contract between client dialects and the gateway.

Dialects depend on this protocol, never on the gateway or any backend: the app passes the
concrete gateway in through each dialect's constructor.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from dragoman.core.events import Event
from dragoman.core.management import LoadOptions, ModelRecipe, PullProgress
from dragoman.core.models import ModelEntry
from dragoman.core.types import ChatRequest, EmbeddingRequest, EmbeddingResponse, Tokenized


@dataclass(slots=True)
class CallContext:
    """Who is calling; built by the serving layer from the HTTP request."""

    dialect: str
    api_key: str | None = None  # the credential the client presented, if any (never logged)
    client_host: str | None = None
    request_id: str = ""
    principal: object | None = None  # set by authentication
    started_at: float = 0.0  # perf_counter when the request arrived
    # The gateway's record of the call once routing starts (``pipeline.CallOutcome``): what the
    # request log and the request's trace span report (model served, tokens, time to first token).
    outcome: object | None = None


class ChatStream(Protocol):
    """An answer that has started: its first event is known to be good."""

    headers: dict[str, str]

    def __aiter__(self) -> AsyncIterator[Event]: ...

    async def aclose(self) -> None: ...


@dataclass(slots=True)
class TokenCount:
    tokens: int
    exact: bool


class GatewayService(Protocol):
    async def authenticate(self, ctx: CallContext) -> None:
        """Raise ``GatewayError(AUTHENTICATION)`` unless the context's key may use the gateway."""

    async def chat(self, request: ChatRequest, ctx: CallContext) -> ChatStream:
        """Plan, route and start the request; raises ``GatewayError`` before the first event."""

    async def embed(self, request: EmbeddingRequest, ctx: CallContext) -> EmbeddingResponse: ...

    async def list_models(self, ctx: CallContext) -> list[ModelEntry]: ...

    async def get_model(self, name: str, ctx: CallContext) -> ModelEntry:
        """The entry for a client-facing name; ``GatewayError(NOT_FOUND)`` listing close matches."""

    async def count_tokens(self, request: ChatRequest, ctx: CallContext) -> TokenCount: ...

    async def tokenize(self, request: ChatRequest, ctx: CallContext, *, add_special: bool) -> Tokenized:
        """Exact token ids from the model's backend; ``GatewayError`` when it has no tokenizer."""

    async def detokenize(self, model: str, tokens: list[int], ctx: CallContext) -> str: ...

    async def load_model(self, name: str, ctx: CallContext, options: LoadOptions) -> ModelEntry:
        """Load the model behind ``name`` now (a no-op for backends that do not load models)."""

    async def unload_model(self, name: str, ctx: CallContext) -> ModelEntry:
        """Free the model behind ``name`` now."""

    async def pull_model(self, name: str, ctx: CallContext) -> AsyncIterator[PullProgress]:
        """Check the caller may, then the pull's progress; the last item says ``success``."""

    async def delete_model(self, name: str, ctx: CallContext) -> None: ...

    async def create_model(self, recipe: ModelRecipe, ctx: CallContext) -> list[PullProgress]: ...

    async def copy_model(self, source: str, destination: str, ctx: CallContext) -> None: ...

    async def has_blob(self, digest: str, ctx: CallContext) -> bool: ...

    async def save_blob(self, digest: str, chunks: AsyncIterator[bytes], ctx: CallContext) -> bool:
        """Store an upload whose sha256 must be ``digest``; False when the blob already existed."""
