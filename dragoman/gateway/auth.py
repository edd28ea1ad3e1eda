"""Who may use the gateway, and what: the access policy, one class for each ``auth.mode``.

* ``keys``: every request needs a dragoman key (``sk-dm-...``); the key decides which models it
  may use and which limits and budgets apply.
* ``none`` and ``forward``: no dragoman key. Under ``forward`` the client's own credential is
  passed to the upstream, which does the checking; here both admit everyone to every model, with
  only the shared per-model limits (``model_limits``) applied.
"""

from __future__ import annotations

import logging
from typing import Protocol

from dragoman.core.service import CallContext
from dragoman.core.types import ChatRequest
from dragoman.errors import ErrorKind, GatewayError
from dragoman.gateway.keys import KeyService, Principal
from dragoman.gateway.limits import Lease, Limiter

log = logging.getLogger("dragoman.auth")

_ANONYMOUS = Principal.anonymous()


class AccessPolicy(Protocol):
    """Authentication, model access and limits, as the gateway asks for them."""

    async def authenticate(self, ctx: CallContext) -> None: ...

    def may_use(self, ctx: CallContext, *names: str) -> bool: ...

    def may_manage(self, ctx: CallContext) -> bool:
        """May pull, create, copy and delete models."""
        ...

    async def acquire(self, ctx: CallContext, model: str, request: ChatRequest | None = None) -> Lease | None:
        """Admit a call of ``model`` (``<backend>/<model>``) or raise; a chat passes its
        ``request``, from which a budget reserves what it may spend until the lease is released."""
        ...


class KeyAccess:
    """``auth.mode: keys``."""

    def __init__(self, keys: KeyService, limiter: Limiter | None = None) -> None:
        self.keys = keys
        self.limiter = limiter

    async def authenticate(self, ctx: CallContext) -> None:
        try:
            ctx.principal = await self.keys.authenticate(ctx.api_key)
        except GatewayError as exc:
            if exc.kind is ErrorKind.AUTHENTICATION:
                # Who and how, never the key itself (not even part of it).
                log.warning("rejected %s request from %s: %s key", ctx.dialect, ctx.client_host or "?",
                            "no" if not ctx.api_key else "an unknown, revoked, disabled or expired")
            raise

    def may_use(self, ctx: CallContext, *names: str) -> bool:
        principal = ctx.principal
        return isinstance(principal, Principal) and principal.may_use(*names)

    def may_manage(self, ctx: CallContext) -> bool:
        principal = ctx.principal
        return isinstance(principal, Principal) and principal.may_manage_models()

    async def acquire(self, ctx: CallContext, model: str, request: ChatRequest | None = None) -> Lease | None:
        principal = ctx.principal
        if not isinstance(principal, Principal):  # the pipeline authenticates first; be safe anyway
            raise GatewayError(ErrorKind.AUTHENTICATION, "Invalid API key")
        return None if self.limiter is None else await self.limiter.acquire(principal, model, request)


class AnonymousAccess:
    """``auth.mode: none`` or ``forward``: everyone, every model; only per-model limits apply
    (none without a ``limiter``: the gateway's default, everyone unlimited).
    ``manage_models``: whether anyone may pull, create and delete models (``none``: yes, as with
    a local Ollama; ``forward``: no, callers are not known to the gateway)."""

    def __init__(self, limiter: Limiter | None = None, *, manage_models: bool = True) -> None:
        self.limiter = limiter
        self.manage_models = manage_models

    def may_manage(self, ctx: CallContext) -> bool:
        return self.manage_models

    async def authenticate(self, ctx: CallContext) -> None:
        ctx.principal = _ANONYMOUS

    def may_use(self, ctx: CallContext, *names: str) -> bool:
        return True

    async def acquire(self, ctx: CallContext, model: str, request: ChatRequest | None = None) -> Lease | None:
        return None if self.limiter is None else await self.limiter.acquire(_ANONYMOUS, model, request)
