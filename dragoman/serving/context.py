"""Who is calling: the credential a client presented and the call's context."""

from __future__ import annotations

import time
from collections.abc import Mapping

from starlette.types import Scope

from dragoman.core.request_ids import SCOPE_CONTEXT, SCOPE_REQUEST_ID, request_id
from dragoman.core.service import CallContext

_KEY_HEADERS = (b"authorization", b"x-api-key", b"api-key")


def credentials(headers: Mapping[str, str]) -> str | None:
    """The key a client presented: ``Authorization: Bearer``, ``x-api-key`` or ``api-key``.

    An empty bearer (Enchanted sends ``Bearer `` when no key is set) counts as none.
    """
    authorization = headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    for name in ("x-api-key", "api-key"):
        value = headers.get(name, "").strip()
        if value:
            return value
    return None


def scope_credentials(raw_headers: list[tuple[bytes, bytes]]) -> str | None:
    """:func:`credentials` in one pass over the raw ASGI headers (this runs on every request)."""
    found = {name: value for name, value in raw_headers if name in _KEY_HEADERS}
    if not found:
        return None
    return credentials({k.decode("latin-1"): v.decode("latin-1") for k, v in found.items()})


def call_context(scope: Scope, dialect: str) -> CallContext:
    """The call's context; its request id is the one the app's request log gave the request (the
    ``x-request-id`` response header), and the request log reads the context back afterwards."""
    client = scope.get("client")
    raw_headers = scope["headers"]
    ctx = CallContext(
        dialect=dialect,
        api_key=scope_credentials(raw_headers),
        client_host=client[0] if client else None,
        request_id=scope.get(SCOPE_REQUEST_ID) or request_id(raw_headers),
        started_at=time.perf_counter(),
    )
    scope[SCOPE_CONTEXT] = ctx
    return ctx
