"""Who may read ``/metrics`` and ``/health/ready`` (``metrics.auth``).

Both name every model and backend and show their health and traffic, so under ``auth.mode:
keys`` they need a key by default. ``none``: anyone; ``key``: a valid dragoman key (what a
Prometheus ``authorization``/``bearer_token`` sends) or the admin password; ``admin``: the admin
password only. The admin password goes through the admin sign-in throttle like any other attempt.
``/health`` (liveness, no details) stays open for load balancers. Errors use the OpenAI error shape.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

from starlette.requests import Request
from starlette.responses import Response

from dragoman.dialects.openai.routes import error_response
from dragoman.errors import ErrorKind, GatewayError
from dragoman.gateway.keys import AUTH_FAILED, KeyService, looks_like_key
from dragoman.serving.context import credentials
from dragoman.serving.endpoints import Endpoint

if TYPE_CHECKING:
    from dragoman.admin.routes import AdminSite

ProbeAuth = Literal["none", "key", "admin"]


class ProbeAccess:
    def __init__(self, mode: ProbeAuth, *, keys: Callable[[], KeyService | None], admin: AdminSite) -> None:
        self.mode = mode
        self._keys = keys
        self._admin = admin

    def guard(self, endpoint: Endpoint) -> Endpoint:
        """``endpoint`` behind ``metrics.auth`` (unchanged under ``none``)."""
        if self.mode == "none":
            return endpoint

        async def guarded(request: Request) -> Response:
            try:
                await self.check(request)
            except GatewayError as exc:
                headers = {"www-authenticate": 'Bearer realm="dragoman"'} \
                    if exc.kind is ErrorKind.AUTHENTICATION else None
                return error_response(exc, headers)
            return await endpoint(request)
        return guarded

    async def check(self, request: Request) -> None:
        where = f"{request.method} {request.url.path}"
        secret = credentials(request.headers)
        if secret is None:
            needed = "a dragoman API key (Authorization: Bearer sk-dm-...)" if self.mode == "key" \
                else "the admin password (Authorization: Bearer <admin password>)"
            raise GatewayError(ErrorKind.AUTHENTICATION, f"{where} needs {needed}; see metrics.auth in the README")
        if self.mode == "admin" and looks_like_key(secret):
            raise GatewayError(ErrorKind.PERMISSION, f"{where} needs the admin password (metrics.auth: admin); "
                                                     "an API key is not enough")
        if self.mode == "key":
            keys = self._keys()
            if keys is None:
                raise GatewayError(ErrorKind.INTERNAL, "the key service is starting", status=503, retry_after=1)
            try:
                await keys.authenticate(secret)
                return
            except GatewayError as exc:
                if exc.kind is not ErrorKind.AUTHENTICATION or looks_like_key(secret):
                    raise
        # Not a key: perhaps the admin password (a guess at it is throttled like any other).
        try:
            await self._admin.verify_bearer(request, secret)
        except GatewayError as exc:
            if exc.kind is ErrorKind.AUTHENTICATION and self.mode == "key":
                raise GatewayError(ErrorKind.AUTHENTICATION, AUTH_FAILED) from exc
            raise
