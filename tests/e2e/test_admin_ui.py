"""The admin UI end to end, in a real headless Chromium (Debian's ``chromium``, driven by Playwright).

One dragoman (``auth.mode: keys``, echo backend, SQLite) serves the whole module; the tests run in
order: sign in, create a key and use it from the ``openai`` SDK, see the request in the usage log
and the chart, revoke the key and see the next call fail, the XSS probe, CSRF rejection, the
playground. Screenshots of every page, desktop and phone, go to ``test-artifacts/screenshots/``.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.servers import ServerThread, dragoman_server

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PASSWORD = "e2e-admin-password-7f3a"
XSS = "<img src=x onerror=alert(1)>"
UPSTREAM_SECRET = "sk-upstream-secret-0123456789abcdef"
STATIC_KEY = "ci-static-key-0123456789abcdef"
SHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


def _playwright() -> Any:
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        pytest.skip("Chromium is not installed (apt-get install chromium); browser tests skipped")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed (pip install playwright); browser tests skipped")
    return sync_playwright


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    tmp = tmp_path_factory.mktemp("admin-e2e")
    config = {
        "backends": [
            {"name": "echo", "type": "echo", "models": ["echo", XSS]},
            # Never contacted (explicit model list): here to show its key masked on the Settings page.
            {"name": "hosted", "type": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key": UPSTREAM_SECRET,
             "models": ["gpt-test"]},
        ],
        "database": f"sqlite:///{tmp / 'dragoman.db'}",
        "auth": {"mode": "keys", "admin_password": PASSWORD, "cache_ttl": 5,
                 "keys": [{"name": "ci-static", "key": STATIC_KEY, "models": ["echo/echo"]}]},
        "usage": {"flush_interval": 0.1},
    }
    with dragoman_server(config) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser(server: ServerThread) -> Iterator[Any]:
    sync_playwright = _playwright()
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


class Session:
    """One browser context (its own cookies), with every dialog and CSP error recorded."""

    def __init__(self, browser: Any, base: str) -> None:
        self.base = base
        self.context = browser.new_context(viewport=DESKTOP)
        self.page = self.context.new_page()
        self.page.set_default_timeout(10_000)
        self.dialogs: list[str] = []
        self.console_errors: list[str] = []
        self.page.on("dialog", self._on_dialog)
        self.page.on("console", lambda msg: self.console_errors.append(msg.text) if msg.type == "error" else None)
        self.page.on("pageerror", lambda exc: self.console_errors.append(str(exc)))

    def _on_dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def goto(self, path: str) -> None:
        self.page.goto(self.base + path)
        self.page.wait_for_load_state("networkidle")

    def shoot(self, name: str) -> None:
        """Desktop and phone screenshots of the current page."""
        self.page.set_viewport_size(DESKTOP)
        self.page.wait_for_timeout(150)
        self.page.screenshot(path=str(SHOTS / f"{name}-desktop.png"), full_page=True)
        self.page.set_viewport_size(PHONE)
        self.page.wait_for_timeout(250)
        self.page.screenshot(path=str(SHOTS / f"{name}-phone.png"), full_page=True)
        self.page.set_viewport_size(DESKTOP)
        self.page.wait_for_timeout(150)

    def close(self) -> None:
        self.context.close()


@pytest.fixture(scope="module")
def admin(browser: Any, server: ServerThread) -> Iterator[Session]:
    session = Session(browser, server.url)
    yield session
    assert session.dialogs == [], f"a JavaScript dialog fired: {session.dialogs}"
    csp = [e for e in session.console_errors if "Content Security Policy" in e]
    assert csp == [], f"CSP violations: {csp}"
    session.close()


@pytest.fixture(scope="module")
def state() -> dict[str, Any]:
    return {}


def sdk(server: ServerThread, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=15)


def create_key_in_ui(admin: Session, name: str) -> str:
    page = admin.page
    admin.goto("/admin/keys")
    page.click("#new-key")
    page.fill("#key-form input[name=name]", name)
    page.click("#key-form [data-role=submit]")
    secret_box = page.locator("[data-testid=key-secret]")
    secret_box.wait_for(state="visible")
    secret = secret_box.text_content() or ""
    assert re.fullmatch(r"sk-dm-[A-Za-z0-9_-]{40}", secret), secret
    return secret


def test_sign_in(admin: Session, server: ServerThread) -> None:
    page = admin.page
    admin.goto("/admin/")
    assert page.url.startswith(server.url + "/admin/login")
    admin.shoot("login")
    page.fill("#password", "sk-dm-" + "k" * 40)  # a user key typed where the password goes: not a guess
    page.click("#login-form button[type=submit]")
    page.locator("#login-error").filter(has_text="this is a dragoman API key, not the admin password").wait_for()
    page.fill("#password", "not-the-password")
    page.click("#login-form button[type=submit]")
    page.locator("#login-error").filter(has_text="wrong password").wait_for()
    page.fill("#password", PASSWORD)
    page.click("#login-form button[type=submit]")
    page.wait_for_url(server.url + "/admin/")
    page.locator("h1", has_text="Overview").wait_for()
    cookies = {c["name"]: c for c in admin.context.cookies()}
    session = cookies["dragoman_admin"]
    assert session["httpOnly"] is True
    assert session["sameSite"] == "Lax"
    assert session["secure"] is False  # plain http on loopback


def test_create_key_and_use_it_from_the_sdk(admin: Session, server: ServerThread, state: dict[str, Any]) -> None:
    secret = create_key_in_ui(admin, "sdk-client")
    admin.shoot("key-created")
    admin.page.click("#secret-dialog [data-close]")
    state["secret"] = secret
    client = sdk(server, secret)
    reply = client.chat.completions.create(model="echo/echo",
                                           messages=[{"role": "user", "content": "hello from the sdk"}])
    assert reply.choices[0].message.content == "hello from the sdk"
    chunks = client.chat.completions.create(model="echo/echo", stream=True,
                                            messages=[{"role": "user", "content": "streamed words here"}])
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "streamed words here"
    # The list shows the key with its hint and the secret nowhere.
    admin.goto("/admin/keys")
    row = admin.page.locator("#keys tr", has_text="sdk-client")
    row.wait_for()
    assert secret[-4:] in (row.text_content() or "")
    assert secret not in admin.page.content()


def test_usage_log_and_chart_show_the_request(admin: Session, state: dict[str, Any]) -> None:
    page = admin.page
    deadline = time.monotonic() + 10
    while True:  # usage is written in batches off the request path (every 0.1 s here)
        admin.goto("/admin/usage")
        rows = page.locator("#rows tr", has_text="sdk-client")
        if rows.count() >= 2 or time.monotonic() > deadline:
            break
        page.wait_for_timeout(200)
    assert rows.count() == 2
    assert "echo/echo" in (rows.first.text_content() or "")
    page.select_option("#filters select[name=status]", "error")
    page.locator("#rows td.empty").wait_for()
    page.select_option("#filters select[name=status]", "")
    page.locator("#rows tr", has_text="sdk-client").first.wait_for()
    href = page.get_attribute("#export", "href") or ""
    assert href.startswith("/admin/api/usage.csv")
    csv = page.request.get(admin.base + href)
    assert csv.status == 200
    assert csv.text().count("sdk-client") == 2
    admin.shoot("usage")

    admin.goto("/admin/")
    page.click("#range button[data-range='1h']")
    page.locator("#by-key tr", has_text="sdk-client").wait_for()
    assert page.text_content("#stat-requests") == "2"
    line = page.locator("#chart-requests path.line.s0")
    assert line.count() == 1
    assert len(line.get_attribute("d") or "") > 20
    assert page.locator("#chart-tokens rect.s0").count() >= 1
    page.locator("#backends tr", has_text="echo").wait_for()
    admin.shoot("overview")


def test_revoked_key_stops_working(admin: Session, server: ServerThread, state: dict[str, Any]) -> None:
    page = admin.page
    admin.goto("/admin/keys")
    row = page.locator("#keys tr", has_text="sdk-client")
    row.get_by_role("button", name="Revoke").click()
    page.locator("#confirm-dialog [data-role=ok]").click()
    page.locator(".toast", has_text="revoked").wait_for()
    page.locator("#keys tr", has_text="sdk-client").wait_for(state="detached")
    with pytest.raises(openai.AuthenticationError) as caught:
        sdk(server, state["secret"]).chat.completions.create(
            model="echo/echo", messages=[{"role": "user", "content": "after revoke"}])
    assert caught.value.status_code == 401


def test_xss_probe_renders_as_text(admin: Session, server: ServerThread, state: dict[str, Any]) -> None:
    page = admin.page
    secret = create_key_in_ui(admin, XSS)
    page.click("#secret-dialog [data-close]")
    state["xss_secret"] = secret
    reply = sdk(server, secret).chat.completions.create(model=f"echo/{XSS}",
                                                        messages=[{"role": "user", "content": XSS}])
    assert reply.choices[0].message.content == XSS
    admin.goto("/admin/keys")
    page.get_by_text(XSS, exact=True).first.wait_for()
    admin.shoot("keys")
    admin.goto("/admin/models")
    page.get_by_text(XSS, exact=True).first.wait_for()
    admin.shoot("models")
    deadline = time.monotonic() + 10
    while True:
        admin.goto("/admin/usage")
        if page.locator("#rows tr", has_text=XSS).count() or time.monotonic() > deadline:
            break
        page.wait_for_timeout(200)
    assert page.locator("#rows td", has_text=XSS).count() >= 2  # the key and the model
    admin.goto("/admin/")
    page.click("#range button[data-range='1h']")
    page.locator("#by-model td", has_text=XSS).wait_for()
    assert page.locator("img[src=x]").count() == 0
    assert admin.dialogs == []


def test_csrf_token_is_required(admin: Session) -> None:
    request = admin.page.request  # shares the signed-in context's cookies
    no_token = request.post(admin.base + "/admin/api/keys", data={"name": "csrf-probe"})
    assert no_token.status == 403
    wrong = request.post(admin.base + "/admin/api/keys", data={"name": "csrf-probe"},
                         headers={"x-csrf-token": "not-the-token"})
    assert wrong.status == 403
    token = admin.page.get_attribute("meta[name=csrf-token]", "content")
    ok = request.post(admin.base + "/admin/api/keys", data={"name": "csrf-probe"}, headers={"x-csrf-token": token})
    assert ok.status == 201
    revoke = request.delete(admin.base + "/admin/api/keys/csrf-probe")
    assert revoke.status == 403


def test_settings_masks_secrets(admin: Session) -> None:
    page = admin.page
    admin.goto("/admin/settings")
    row = page.locator("#backends tr", has_text="hosted")
    row.wait_for()
    assert "sk-...cdef" in (row.text_content() or "")
    assert UPSTREAM_SECRET not in page.content()
    row.get_by_role("button", name="Edit").click()
    assert page.input_value("#backend-form input[name=api_key]") == "sk-...cdef"
    admin.shoot("settings-edit")
    page.click("#backend-dialog [data-close]")
    admin.shoot("settings")


def test_playground_streams_through_a_dialect(admin: Session, state: dict[str, Any]) -> None:
    page = admin.page
    admin.goto("/admin/playground")
    page.select_option("#model", "echo/echo")
    page.fill("#api-key", state["xss_secret"])
    page.fill("#prompt", "streaming through the playground")
    page.click("#send")
    page.locator(".msg.assistant .content", has_text="streaming through the playground").wait_for()
    raw = page.text_content("#raw-response") or ""
    assert "data: " in raw and "[DONE]" in raw
    assert "200" in (page.text_content("#res-line") or "")
    assert state["xss_secret"] not in (page.text_content("#raw-request") or "")
    admin.shoot("playground")


def test_phone_layout_collapses_the_sidebar(admin: Session) -> None:
    page = admin.page
    admin.goto("/admin/keys")
    page.set_viewport_size(PHONE)
    try:
        assert not page.locator("#nav").is_visible()
        page.click(".nav-toggle")
        page.locator("#nav a", has_text="Usage log").wait_for(state="visible")
        page.screenshot(path=str(SHOTS / "nav-open-phone.png"))
        page.locator("#nav a", has_text="Usage log").click()
        page.wait_for_url("**/admin/usage")
    finally:
        page.set_viewport_size(DESKTOP)


def test_config_keys_are_shown_read_only(admin: Session, server: ServerThread) -> None:
    reply = sdk(server, STATIC_KEY).chat.completions.create(model="echo/echo",
                                                            messages=[{"role": "user", "content": "static"}])
    assert reply.choices[0].message.content == "static"
    page = admin.page
    admin.goto("/admin/keys")
    row = page.locator("#keys tr", has_text="ci-static")
    row.wait_for()
    assert row.locator(".badge", has_text="config").count() == 1
    assert "read-only" in (row.text_content() or "") and "used" in (row.text_content() or "")
    for name in ("Edit", "Disable", "Revoke"):
        assert row.get_by_role("button", name=name).count() == 0
    assert STATIC_KEY not in page.content()
    admin.shoot("keys-config")
    row.get_by_role("button", name="Usage").click()
    page.locator("#usage-dialog [data-role=title]", has_text="ci-static").wait_for()
    page.locator("#key-recent tr", has_text="echo/echo").wait_for()
    page.click("#usage-dialog [data-close]")
