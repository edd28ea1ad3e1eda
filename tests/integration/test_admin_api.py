"""The admin API over real HTTP (a real dragoman in a thread, SQLite, httpx as the client):
authentication on every route, throttling, CSRF, cookies, secret masking, the password kept out of
logs, and runtime edits of keys, aliases, overrides and backends that survive a restart."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from starlette.routing import Mount, Route

from tests.servers import ServerThread, dragoman_server

PASSWORD = "integration-admin-pw-93kd"
UPSTREAM_SECRET = "sk-live-upstream-secret-9f8e7d6c5b4a"


def config(tmp: Path, **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "backends": [
            {"name": "echo", "type": "echo", "models": ["echo"]},
            {"name": "hosted", "type": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key": UPSTREAM_SECRET,
             "models": ["gpt-test"]},
        ],
        "database": f"sqlite:///{tmp / 'dragoman.db'}",
        "auth": {"mode": "keys", "admin_password": PASSWORD},
        "usage": {"flush_interval": 0.05},
    }
    base.update(extra)
    return base


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    with dragoman_server(config(tmp_path)) as srv:
        yield srv


def bearer(password: str = PASSWORD) -> dict[str, str]:
    return {"authorization": f"Bearer {password}"}


def sign_in(client: httpx.Client, password: str = PASSWORD) -> str:
    """Sign in like the browser does; returns the session's CSRF token."""
    token = client.get("/admin/api/session").json()["csrf_token"]
    answer = client.post("/admin/api/session", json={"password": password}, headers={"x-csrf-token": token})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["csrf_token"])


def sdk(server: ServerThread, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=10)


def wait_for_usage(client: httpx.Client, params: dict[str, str], count: int) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        body: dict[str, Any] = client.get("/admin/api/usage", params=params, headers=bearer()).json()
        if body["total"] >= count or time.monotonic() > deadline:
            return body
        time.sleep(0.05)


def api_routes(server: ServerThread) -> list[tuple[str, list[str]]]:
    """The admin API's route table, read from the running app's router."""
    admin = next(r for r in server.app.routes if isinstance(r, Mount) and r.path == "/admin")  # type: ignore[attr-defined]
    api = next(r for r in admin.routes if isinstance(r, Mount) and r.path == "/api")
    return [(r.path, sorted((r.methods or set()) - {"HEAD"})) for r in api.routes
            if isinstance(r, Route) and r.path not in ("/session", "/{rest:path}")]


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "some-name", path)


def test_every_route_requires_the_admin(server: ServerThread) -> None:
    routes = api_routes(server)
    assert len(routes) >= 20
    with httpx.Client(base_url=server.url) as client:
        for path, methods in routes:
            for method in methods:
                answer = client.request(method, "/admin/api" + concrete(path), json={})
                assert answer.status_code == 401, (method, path, answer.text)
                assert answer.json()["error"]["type"] == "authentication"
        assert client.get("/admin/api/no-such-route").status_code == 401
        for page in ("/admin/", "/admin/keys", "/admin/models", "/admin/usage", "/admin/settings",
                     "/admin/playground"):
            answer = client.get(page)
            assert answer.status_code == 303
            assert answer.headers["location"].startswith("/admin/login?next=")
        # A signed but not signed-in session (the login page's) is not enough.
        client.get("/admin/login")
        assert client.get("/admin/api/keys").status_code == 401
        # Signed in: every GET answers (the others were covered by their own tests).
        sign_in(client)
        for path, methods in routes:
            if "GET" in methods and "{" not in path:
                assert client.get("/admin/api" + path).status_code == 200, path
        assert client.get("/admin/api/no-such-route").status_code == 404


def test_admin_password_as_bearer_needs_no_csrf(server: ServerThread) -> None:
    with httpx.Client(base_url=server.url) as client:
        assert client.get("/admin/api/keys", headers=bearer()).status_code == 200
        created = client.post("/admin/api/keys", json={"name": "script"}, headers=bearer())
        assert created.status_code == 201
        assert created.json()["secret"].startswith("sk-dm-")
        assert client.get("/admin/api/keys", headers=bearer("wrong")).status_code == 401
        assert "set-cookie" not in created.headers


def test_sign_in_is_throttled_per_client(server: ServerThread) -> None:
    with httpx.Client(base_url=server.url) as client:
        token = client.get("/admin/api/session").json()["csrf_token"]
        for _ in range(5):
            wrong = client.post("/admin/api/session", json={"password": "guess"}, headers={"x-csrf-token": token})
            assert wrong.status_code == 401
        blocked = client.post("/admin/api/session", json={"password": PASSWORD}, headers={"x-csrf-token": token})
        assert blocked.status_code == 429
        assert 1 <= int(blocked.headers["retry-after"]) <= 300
        # The form and the bearer are throttled too: the same address is still guessing.
        page = client.get("/admin/login")
        form_token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert form_token is not None
        form = client.post("/admin/login", data={"password": PASSWORD, "csrf_token": form_token.group(1)})
        assert form.status_code == 429
        assert "retry-after" in form.headers
        assert client.get("/admin/api/keys", headers=bearer()).status_code == 429


def test_bearer_guessing_is_throttled(server: ServerThread) -> None:
    with httpx.Client(base_url=server.url) as client:
        for _ in range(5):
            assert client.get("/admin/api/keys", headers=bearer("guess")).status_code == 401
        assert client.get("/admin/api/keys", headers=bearer()).status_code == 429


def test_csrf_token_is_required_with_a_session(server: ServerThread) -> None:
    with httpx.Client(base_url=server.url) as client:
        # Signing in needs the token of the page's session too.
        client.get("/admin/api/session")
        assert client.post("/admin/api/session", json={"password": PASSWORD}).status_code == 403
        csrf = sign_in(client)
        assert client.post("/admin/api/keys", json={"name": "a"}).status_code == 403
        assert client.post("/admin/api/keys", json={"name": "a"}, headers={"x-csrf-token": "nope"}).status_code == 403
        assert client.post("/admin/api/keys", json={"name": "a"}, headers={"x-csrf-token": csrf}).status_code == 201
        assert client.delete("/admin/api/keys/a").status_code == 403
        assert client.patch("/admin/api/keys/a", json={"rpm": 5}).status_code == 403
        assert client.put("/admin/api/aliases/x", json={"targets": ["echo/echo"]}).status_code == 403
        assert client.post("/admin/logout", data={}).status_code == 403
        out = client.post("/admin/logout", data={"csrf_token": csrf})
        assert out.status_code == 303
        assert client.get("/admin/api/keys").status_code == 401


def test_session_cookie_flags_and_security_headers(server: ServerThread) -> None:
    with httpx.Client(base_url=server.url) as client:
        token = client.get("/admin/api/session").json()["csrf_token"]
        answer = client.post("/admin/api/session", json={"password": PASSWORD}, headers={"x-csrf-token": token})
        cookie = answer.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=lax" in cookie and "path=/admin" in cookie
        assert "secure" not in cookie
        page = client.get("/admin/keys")
        assert page.status_code == 200
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert page.headers["x-frame-options"] == "DENY"
        assert client.get("/admin/api/keys").headers["cache-control"] == "no-store"
    with httpx.Client(base_url=server.url, headers={"x-forwarded-proto": "https"}) as tls:
        # Behind a TLS proxy the cookie is Secure (so httpx, on plain http here, keeps it to itself).
        assert "secure" in tls.get("/admin/api/session").headers["set-cookie"].lower()
        assert "secure" in tls.get("/admin/login").headers["set-cookie"].lower()


def test_backend_secrets_are_masked_and_kept(server: ServerThread) -> None:
    registry = server.app_state.services.registry  # type: ignore[attr-defined]
    with httpx.Client(base_url=server.url, headers=bearer()) as client:
        listing = client.get("/admin/api/backends")
        assert UPSTREAM_SECRET not in listing.text
        hosted = next(b for b in listing.json()["backends"] if b["name"] == "hosted")
        assert hosted["settings"]["api_key"] == "sk-...5b4a"
        # Saving the masked value back keeps the secret; other fields change.
        edited = client.put("/admin/api/backends/hosted", json={"type": "openai", "settings": {
            **hosted["settings"], "models": ["gpt-test", "gpt-other"]}})
        assert edited.status_code == 200, edited.text
        assert UPSTREAM_SECRET not in edited.text
        assert registry.backends["hosted"].settings.api_key == UPSTREAM_SECRET
        assert registry.backends["hosted"].settings.models == ["gpt-test", "gpt-other"]
        # A new value replaces it; a bare mask with nothing to restore is refused.
        replaced = client.put("/admin/api/backends/hosted", json={"type": "openai", "settings": {
            **hosted["settings"], "api_key": "short-key"}})
        assert replaced.status_code == 200
        assert registry.backends["hosted"].settings.api_key == "short-key"
        masked = next(b for b in replaced.json()["backends"] if b["name"] == "hosted")
        assert masked["settings"]["api_key"] == "••••"
        refused = client.post("/admin/api/backends", json={"name": "new", "type": "openai", "settings": {
            "base_url": "http://127.0.0.1:9/v1", "api_key": "••••"}})
        assert refused.status_code == 400
        test = client.post("/admin/api/backends/test", json={"name": "hosted", "type": "openai",
                                                             "settings": masked["settings"]})
        assert test.status_code == 200
        assert "short-key" not in test.text


def test_password_never_reaches_the_logs(server: ServerThread, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="dragoman")
    with httpx.Client(base_url=server.url) as client:
        token = client.get("/admin/api/session").json()["csrf_token"]
        client.post("/admin/api/session", json={"password": PASSWORD + "x"}, headers={"x-csrf-token": token})
        sign_in(client)
        client.get("/admin/api/keys", headers=bearer())
        client.get("/admin/api/keys", headers=bearer(PASSWORD + "y"))
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert "failed admin sign-in" in text
    assert PASSWORD not in text


def test_generated_password_is_shown_once(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    settings = config(tmp_path, auth={"mode": "keys"})
    with dragoman_server(settings) as first:
        shown = capsys.readouterr().err
        match = re.search(r"admin password \(generated; shown only this once\):\s+(\S+)", shown)
        assert match is not None, shown
        password = match.group(1)
        with httpx.Client(base_url=first.url) as client:
            assert client.get("/admin/api/keys", headers=bearer(password)).status_code == 200
            assert client.get("/admin/api/keys", headers=bearer("admin")).status_code == 401
    with dragoman_server(settings) as second:
        again = capsys.readouterr().err
        assert password not in again and "admin password" not in again
        with httpx.Client(base_url=second.url) as client:
            assert client.get("/admin/api/keys", headers=bearer(password)).status_code == 200
    assert password not in "\n".join(record.getMessage() for record in caplog.records)


def test_keys_lifecycle_through_the_api(server: ServerThread) -> None:
    with httpx.Client(base_url=server.url, headers=bearer()) as client:
        created = client.post("/admin/api/keys", json={"name": "team", "models": "echo/*", "rpm": 100,
                                                       "budget_tokens": 1000, "budget_period": "day",
                                                       "expires_at": "2999-01-01T00:00:00Z"})
        assert created.status_code == 201, created.text
        key, secret = created.json()["key"], created.json()["secret"]
        assert key["models"] == ["echo/*"] and key["rpm"] == 100 and key["expires_at"].startswith("2999")
        assert secret not in client.get("/admin/api/keys").text
        assert sdk(server, secret).chat.completions.create(
            model="echo/echo", messages=[{"role": "user", "content": "hi"}]).choices[0].message.content == "hi"
        with pytest.raises(openai.PermissionDeniedError):
            sdk(server, secret).chat.completions.create(model="hosted/gpt-test",
                                                        messages=[{"role": "user", "content": "hi"}])
        bad = client.post("/admin/api/keys", json={"name": "x", "rpm": -1})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "rpm"
        assert client.post("/admin/api/keys", json={"name": "team"}).status_code == 400  # names are unique
        assert client.patch(f"/admin/api/keys/{key['id']}", json={"enabled": False}).json()["key"]["enabled"] is False
        with pytest.raises(openai.AuthenticationError):
            sdk(server, secret).chat.completions.create(model="echo/echo", messages=[{"role": "user", "content": "x"}])
        client.patch(f"/admin/api/keys/{key['id']}", json={"enabled": True, "rpm": None})
        assert client.get(f"/admin/api/keys/{key['id']}").json()["key"]["rpm"] is None
        sdk(server, secret).chat.completions.create(model="echo/echo", messages=[{"role": "user", "content": "x"}])
        usage = client.get(f"/admin/api/keys/{key['id']}/usage").json()
        assert usage["key"]["name"] == "team" and len(usage["series"]) > 10
        assert client.delete("/admin/api/keys/team").status_code == 200
        with pytest.raises(openai.AuthenticationError):
            sdk(server, secret).chat.completions.create(model="echo/echo", messages=[{"role": "user", "content": "x"}])
        assert client.get(f"/admin/api/keys/{key['id']}").status_code == 404


def test_usage_log_filters_pages_and_csv(server: ServerThread) -> None:
    with httpx.Client(base_url=server.url, headers=bearer()) as client:
        first = client.post("/admin/api/keys", json={"name": "first"}).json()
        second = client.post("/admin/api/keys", json={"name": "=cmd|' /C calc'!A0"}).json()
        one = sdk(server, first["secret"])
        for text in ("a b", "c d e"):
            one.chat.completions.create(model="echo/echo", messages=[{"role": "user", "content": text}])
        with pytest.raises(openai.NotFoundError):
            one.chat.completions.create(model="echo/missing", messages=[{"role": "user", "content": "x"}])
        sdk(server, second["secret"]).chat.completions.create(model="echo", messages=[{"role": "user", "content": "y"}])
        everything = wait_for_usage(client, {}, 4)
        assert everything["total"] == 4
        mine = client.get("/admin/api/usage", params={"key": first["key"]["id"]}).json()
        assert mine["total"] == 3
        assert client.get("/admin/api/usage", params={"status": "error"}).json()["items"][0]["status"] == 404
        assert client.get("/admin/api/usage", params={"status": "ok"}).json()["total"] == 3
        assert client.get("/admin/api/usage", params={"model": "echo/echo"}).json()["total"] == 3  # incl. "echo"
        page2 = client.get("/admin/api/usage", params={"per_page": 3, "page": 2}).json()
        assert page2["pages"] == 2 and len(page2["items"]) == 1
        future = client.get("/admin/api/usage", params={"since": "2999-01-01T00:00:00Z"}).json()
        assert future["total"] == 0
        assert client.get("/admin/api/usage", params={"status": "bad"}).status_code == 400
        assert client.get("/admin/api/usage", params={"since": "yesterday"}).status_code == 400
        csv = client.get("/admin/api/usage.csv", params={"key": second["key"]["id"]})
        assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
        assert "attachment" in csv.headers["content-disposition"]
        lines = csv.text.strip().splitlines()
        assert lines[0].startswith("ts,request_id,key_id,key_name")
        assert len(lines) == 2
        assert "'=cmd" in lines[1]  # no spreadsheet formula injection
        overview = client.get("/admin/api/overview", params={"range": "1h"}).json()
        assert overview["totals"]["requests"] == 4 and overview["totals"]["errors"] == 1
        assert {b["name"] for b in overview["backends"]} == {"echo", "hosted"}
        assert sum(p["requests"] for p in overview["series"]) == 4
        assert client.get("/admin/api/overview", params={"range": "2y"}).status_code == 400


def test_aliases_overrides_and_backends_apply_at_once_and_persist(tmp_path: Path) -> None:
    settings = config(tmp_path, auth={"mode": "none", "admin_password": PASSWORD})
    with dragoman_server(settings) as srv, httpx.Client(base_url=srv.url, headers=bearer()) as client:
        llm = sdk(srv, "unused")
        bad_json = client.put("/admin/api/overrides/echo%2Fecho", content=b"{nope",
                              headers={"content-type": "application/json"})
        assert bad_json.status_code == 400
        assert client.put("/admin/api/overrides/echo/echo", json=[1]).status_code == 400
        invalid = client.put("/admin/api/overrides/echo/echo", json={"max_tokens_cap": 0})
        assert invalid.status_code == 400 and "max_tokens_cap" in invalid.json()["error"]["message"]
        assert client.put("/admin/api/overrides/echo/echo", json={"max_tokens_cap": 2}).status_code == 200
        reply = llm.chat.completions.create(model="echo/echo", messages=[{"role": "user", "content": "one two three"}])
        assert reply.choices[0].message.content.strip() == "one two"
        models = client.put("/admin/api/aliases/fast", json={"targets": ["echo/echo"]}).json()
        assert {"name": "fast", "targets": ["echo/echo"], "resolves_to": "echo/echo"} in models["aliases"]
        assert llm.chat.completions.create(model="fast", messages=[{"role": "user", "content": "a"}]).model
        created = client.post("/admin/api/backends", json={"name": "echo2", "type": "echo",
                                                           "settings": {"models": ["m2"]}})
        assert created.status_code == 200, created.text
        assert llm.chat.completions.create(model="echo2/m2", messages=[{"role": "user", "content": "b"}])
        assert client.post("/admin/api/backends", json={"name": "echo2", "type": "echo"}).status_code == 409
        wrong = client.put("/admin/api/backends/echo2", json={"type": "echo", "settings": {"modelz": []}})
        assert wrong.status_code == 400
        assert client.put("/admin/api/backends/echo2", json={"type": "echo",
                                                             "settings": {"models": ["m3"]}}).status_code == 200
        with pytest.raises(openai.NotFoundError):
            llm.chat.completions.create(model="echo2/m2", messages=[{"role": "user", "content": "b"}])
        tested = client.post("/admin/api/backends/test", json={"type": "echo", "settings": {"models": ["t"]}})
        assert tested.json() == {"ok": True, "error": None, "models": ["t"]}
        assert client.delete("/admin/api/backends/hosted").status_code == 200
    with dragoman_server(settings) as srv, httpx.Client(base_url=srv.url, headers=bearer()) as client:
        llm = sdk(srv, "unused")
        body = client.get("/admin/api/models").json()
        assert body["overrides"] == {"echo/echo": {"max_tokens_cap": 2}}
        assert [a["name"] for a in body["aliases"]] == ["fast"]
        assert {b["name"] for b in body["backends"]} == {"echo", "echo2"}  # hosted stays removed
        reply = llm.chat.completions.create(model="fast", messages=[{"role": "user", "content": "one two three"}])
        assert reply.choices[0].message.content.strip() == "one two"
        assert llm.chat.completions.create(model="echo2/m3", messages=[{"role": "user", "content": "c"}])
        assert client.delete("/admin/api/overrides/echo/echo").status_code == 200
        assert client.delete("/admin/api/aliases/fast").status_code == 200
        assert client.delete("/admin/api/aliases/fast").status_code == 404
        assert client.delete("/admin/api/backends/echo2").status_code == 200
        with pytest.raises(openai.NotFoundError):
            llm.chat.completions.create(model="echo2/m3", messages=[{"role": "user", "content": "c"}])
