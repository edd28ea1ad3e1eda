"""``/admin``: the pages, the JSON API, sign-in and the static files, as one Starlette ``Mount``.

Every API route is wrapped by :meth:`AdminSite.guard` (401 without a session or the admin
password as a bearer, 403 on a cookie call without the CSRF token or with a user key as the
bearer, 429 while throttled); every
page by :meth:`AdminSite.page` (a redirect to the sign-in page without a session). Responses
carry a strict Content-Security-Policy: the pages run only the scripts under ``static/``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from dragoman import __version__
from dragoman.admin.api import AdminAPI, error_body, read_object
from dragoman.admin.security import ADMIN_ACCOUNT, COOKIE_NAME, SESSION_MAX_AGE, AdminAuth, Session
from dragoman.config import Config
from dragoman.errors import ErrorKind, GatewayError
from dragoman.gateway.keys import looks_like_key
from dragoman.serving.answers import json_response
from dragoman.serving.endpoints import Endpoint

if TYPE_CHECKING:
    from dragoman.services import AppServices

log = logging.getLogger("dragoman.admin")

HERE = Path(__file__).parent
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}
PAGES = [
    ("overview", "/", "Overview"),
    ("keys", "/keys", "Keys"),
    ("models", "/models", "Models"),
    ("usage", "/usage", "Usage log"),
    ("settings", "/settings", "Settings"),
    ("playground", "/playground", "Playground"),
]


def announce_password(password: str) -> None:
    """Shown once on the terminal (never through logging, whose output may be shipped anywhere)."""
    line = "=" * 72
    sys.stderr.write(f"\n{line}\n dragoman admin password (generated; shown only this once):\n\n"
                     f"     {password}\n\n Sign in at /admin. Set DRAGOMAN_ADMIN_PASSWORD or auth.admin_password"
                     f"\n to choose your own.\n{line}\n\n")
    sys.stderr.flush()


def is_https(request: Request) -> bool:
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return request.url.scheme == "https" or forwarded == "https"


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def bearer_token(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def api_error(exc: GatewayError) -> Response:
    headers = dict(SECURITY_HEADERS)
    if exc.retry_after is not None:
        headers["retry-after"] = str(max(1, round(exc.retry_after)))
    if exc.kind is ErrorKind.AUTHENTICATION:
        headers["www-authenticate"] = 'Bearer realm="dragoman admin"'
    return json_response(error_body(exc), status=exc.status, headers=headers)


def admin_auth(config: Config) -> AdminAuth:
    """The admin password check, built with the app (it is set up at start, from the database)."""
    return AdminAuth(password=config.auth.admin_password, session_secret=config.auth.session_secret,
                     announce=announce_password)


class AdminSite:
    """Built once the services run: the admin settings are loaded, the password is set up."""

    def __init__(self, services: AppServices) -> None:
        self.services = services
        self.auth = services.admin_auth
        self.live = services.settings
        self.api = AdminAPI(services, self.live)
        self.templates = Environment(loader=FileSystemLoader(HERE / "templates"),
                                     autoescape=select_autoescape(default=True, default_for_string=True),
                                     trim_blocks=True, lstrip_blocks=True)

    # -- authorisation ------------------------------------------------------------------------

    def session(self, request: Request) -> Session | None:
        return self.auth.load(request.cookies.get(COOKIE_NAME))

    async def authorize(self, request: Request) -> None:
        """Raise unless the request carries the admin password as a bearer, or a signed-in
        session (plus its CSRF token on unsafe methods)."""
        token = bearer_token(request)
        if token is not None:
            await self.verify_bearer(request, token)
            return
        if not self.auth.ready:
            raise GatewayError(ErrorKind.INTERNAL, "the admin service is starting", status=503, retry_after=1)
        session = self.session(request)
        if session is None or not session.signed_in:
            raise GatewayError(ErrorKind.AUTHENTICATION, "sign in first (or send the admin password as a bearer)")
        if request.method not in SAFE_METHODS and not session.csrf_ok(request.headers.get("x-csrf-token")):
            raise GatewayError(ErrorKind.PERMISSION, "missing or wrong CSRF token (x-csrf-token header)",
                               code="csrf")

    async def verify_bearer(self, request: Request, token: str) -> None:
        """The admin password sent as a bearer (scripts, ``metrics.auth: admin``), throttled."""
        await self._verify(request, token, self.auth.check_bearer)

    async def _verify(self, request: Request, secret: str, check: Callable[[str], Awaitable[bool]], *,
                      wrong: str = "wrong admin password") -> None:
        """Check ``secret`` as the admin password, throttled per account and client address.

        A dragoman API key is refused (403) without being checked or counted: it is a user key
        sent to the wrong place, not a guess. While an address must wait, it gets 429 and its
        attempt is not checked either, so waiting is the only way on.
        """
        if not self.auth.ready:
            raise GatewayError(ErrorKind.INTERNAL, "the admin service is starting", status=503, retry_after=1)
        if looks_like_key(secret):
            raise GatewayError(ErrorKind.PERMISSION, "this is a dragoman API key, not the admin password; "
                                                     "the admin API needs the admin password")
        client = client_address(request)
        wait = self.auth.throttle.retry_after(ADMIN_ACCOUNT, client)
        if wait is not None:
            raise GatewayError(ErrorKind.RATE_LIMITED, "too many failed sign-in attempts; try again later",
                               retry_after=wait)
        if not await check(secret):
            self.auth.throttle.failed(ADMIN_ACCOUNT, client)
            log.warning("failed admin sign-in from %s", client)
            raise GatewayError(ErrorKind.AUTHENTICATION, wrong)
        self.auth.throttle.succeeded(ADMIN_ACCOUNT, client)

    def guard(self, handler: Endpoint) -> Endpoint:
        async def guarded(request: Request) -> Response:
            try:
                await self.authorize(request)
                response = await handler(request)
            except GatewayError as exc:
                return api_error(exc)
            response.headers.update(SECURITY_HEADERS)
            return response
        return guarded

    # -- sign-in ------------------------------------------------------------------------------

    def set_cookie(self, request: Request, response: Response, value: str) -> None:
        response.set_cookie(COOKIE_NAME, value, max_age=SESSION_MAX_AGE, path="/admin", httponly=True,
                            samesite="lax", secure=is_https(request))

    async def sign_in(self, request: Request, session: Session | None, password: str, token: str | None) -> str:
        """The new session cookie, or a ``GatewayError`` (403 bad CSRF token, 429, 401)."""
        if not self.auth.ready:
            raise GatewayError(ErrorKind.INTERNAL, "the admin service is starting", status=503, retry_after=1)
        if session is None or not session.csrf_ok(token):
            raise GatewayError(ErrorKind.PERMISSION, "the sign-in form expired; reload the page and try again",
                               code="csrf")
        await self._verify(request, password, self.auth.check_password, wrong="wrong password")
        log.info("admin signed in from %s", client_address(request))
        return self.auth.new_session(signed_in=True)[1]

    async def api_session(self, request: Request) -> Response:
        """GET: is this browser signed in (and its CSRF token); POST: sign in; DELETE: sign out."""
        session = self.session(request)
        try:
            if request.method == "GET":
                response = json_response({"signed_in": bool(session and session.signed_in),
                                          "csrf_token": session.csrf if session else None})
                if session is None and self.auth.ready:
                    session, cookie = self.auth.new_session(signed_in=False)
                    response = json_response({"signed_in": False, "csrf_token": session.csrf})
                    self.set_cookie(request, response, cookie)
            elif request.method == "POST":
                data = await read_object(request)
                password = data.get("password")
                cookie = await self.sign_in(request, session, password if isinstance(password, str) else "",
                                            request.headers.get("x-csrf-token"))
                fresh = self.auth.load(cookie)
                response = json_response({"signed_in": True, "csrf_token": fresh.csrf if fresh else None})
                self.set_cookie(request, response, cookie)
            else:
                if session is None or not session.csrf_ok(request.headers.get("x-csrf-token")):
                    raise GatewayError(ErrorKind.PERMISSION, "missing or wrong CSRF token", code="csrf")
                response = json_response({"signed_in": False})
                response.delete_cookie(COOKIE_NAME, path="/admin")
        except GatewayError as exc:
            return api_error(exc)
        response.headers.update(SECURITY_HEADERS)
        return response

    # -- pages --------------------------------------------------------------------------------

    def render(self, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        template = self.templates.get_template(name)
        html = template.render(version=__version__, auth_mode=self.services.config.auth.mode, pages=PAGES,
                               **context)
        return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)

    def page(self, name: str, title: str) -> Endpoint:
        async def handler(request: Request) -> Response:
            session = self.session(request)
            if session is None or not session.signed_in:
                target = quote(request.url.path, safe="/")
                return RedirectResponse(f"/admin/login?next={target}", status_code=303, headers=SECURITY_HEADERS)
            return self.render(f"{name}.html", page=name, title=title, csrf_token=session.csrf)
        return handler

    async def login_page(self, request: Request) -> Response:
        session = self.session(request)
        target = request.query_params.get("next", "/admin/")
        if not target.startswith("/admin") or target.startswith("//"):
            target = "/admin/"
        if session is not None and session.signed_in and request.method == "GET":
            return RedirectResponse(target, status_code=303, headers=SECURITY_HEADERS)
        error, status, extra = None, 200, {}
        if request.method == "POST":
            form = await request.form()
            password, token = form.get("password"), form.get("csrf_token")
            try:
                cookie = await self.sign_in(request, session, password if isinstance(password, str) else "",
                                            token if isinstance(token, str) else None)
            except GatewayError as exc:
                error, status = exc.message, exc.status
                if exc.retry_after is not None:
                    extra["retry-after"] = str(max(1, round(exc.retry_after)))
            else:
                redirect = RedirectResponse(target, status_code=303, headers=SECURITY_HEADERS)
                self.set_cookie(request, redirect, cookie)
                return redirect
        if not self.auth.ready:
            return self.render("login.html", status=503, page="login", title="Sign in", csrf_token="",
                               next=target, error="dragoman is starting; reload in a moment")
        # Reuse a valid signed-out session (two tabs keep working); a new one is issued on success.
        if session is None or session.signed_in:
            session, cookie = self.auth.new_session(signed_in=False)
        else:
            cookie = self.auth.dump(session)
        response = self.render("login.html", status=status, page="login", title="Sign in",
                               csrf_token=session.csrf, next=target, error=error)
        response.headers.update(extra)
        self.set_cookie(request, response, cookie)
        return response

    async def logout(self, request: Request) -> Response:
        session = self.session(request)
        form = await request.form()
        token = form.get("csrf_token")
        if session is None or not session.csrf_ok(token if isinstance(token, str) else None):
            return self.render("login.html", status=403, page="login", title="Sign in", csrf_token="",
                               next="/admin/", error="the sign-out form expired; reload the page")
        response = RedirectResponse("/admin/login", status_code=303, headers=SECURITY_HEADERS)
        response.delete_cookie(COOKIE_NAME, path="/admin")
        return response

    async def not_found(self, request: Request) -> Response:
        return api_error(GatewayError(ErrorKind.NOT_FOUND, f"no admin API route {request.method} {request.url.path}"))

    # -- assembly -----------------------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        api: list[BaseRoute] = [Route("/session", self.api_session, methods=["GET", "POST", "DELETE"])]
        api += [Route(path, self.guard(handler), methods=methods) for path, handler, methods in self.api.routes()]
        api.append(Route("/{rest:path}", self.guard(self.not_found),
                         methods=["GET", "POST", "PUT", "PATCH", "DELETE"]))
        inner: list[BaseRoute] = [
            Route("/login", self.login_page, methods=["GET", "POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Mount("/api", routes=api),
            Mount("/static", app=StaticFiles(directory=HERE / "static"), name="admin-static"),
        ]
        inner += [Route(path, self.page(name, title), methods=["GET"]) for name, path, title in PAGES]
        return [Route("/admin", lambda request: RedirectResponse("/admin/", status_code=307), methods=["GET"]),
                Mount("/admin", routes=inner)]


def admin_routes(services: AppServices) -> list[BaseRoute]:
    """The admin site's routes."""
    return AdminSite(services).routes()
