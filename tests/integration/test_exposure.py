"""What an unauthenticated caller can see or block, over real HTTP (issue 14, "Exposure").

* ``/metrics`` and ``/health/ready`` name models and backends and show their health: under
  ``auth.mode: keys`` they need a key by default (``metrics.auth: none | key | admin``);
  ``/health`` stays open for load balancers.
* Admin sign-in throttling is per (account, client address), a growing delay rather than a hard
  lockout: a flood of wrong guesses from one address does not keep the admin out from another,
  a user key sent to the admin API is refused as what it is and not counted as a guess, and
  behind a trusted proxy the address comes from ``X-Forwarded-For``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers import ServerThread, dragoman_server

PASSWORD = "exposure-admin-pw-5c1e"


def config(tmp: Path, **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "backends": [{"name": "echo", "type": "echo", "models": ["echo", "secret-project-model"]}],
        "database": f"sqlite:///{tmp / 'dragoman.db'}",
        "auth": {"mode": "keys", "admin_password": PASSWORD},
    }
    base.update(extra)
    return base


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def new_key(server: ServerThread, name: str = "scraper") -> str:
    created = httpx.post(f"{server.url}/admin/api/keys", json={"name": name}, headers=bearer(PASSWORD))
    assert created.status_code == 201, created.text
    return str(created.json()["secret"])


def from_address(server: ServerThread, address: str) -> httpx.Client:
    """A client whose connections come from ``address`` (any 127.x.y.z is the loopback on Linux)."""
    return httpx.Client(base_url=server.url, transport=httpx.HTTPTransport(local_address=address))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    with dragoman_server(config(tmp_path)) as srv:
        yield srv


# ------------------------------------------------------------------------ metrics and readiness


def test_metrics_and_readiness_need_a_key_in_keys_mode(server: ServerThread) -> None:
    anonymous = httpx.get(f"{server.url}/metrics")
    assert anonymous.status_code == 401
    assert anonymous.json() == {"error": {
        "message": "GET /metrics needs a dragoman API key (Authorization: Bearer sk-dm-...); "
                   "see metrics.auth in the README",
        "type": "authentication_error", "param": None, "code": "invalid_api_key"}}
    assert anonymous.headers["www-authenticate"] == 'Bearer realm="dragoman"'
    assert "secret-project-model" not in anonymous.text and "echo" not in anonymous.text
    ready = httpx.get(f"{server.url}/health/ready")
    assert ready.status_code == 401
    assert ready.json()["error"]["message"].startswith("GET /health/ready needs a dragoman API key")
    assert "backends" not in ready.text
    wrong = httpx.get(f"{server.url}/metrics", headers=bearer("sk-dm-" + "x" * 40))
    assert wrong.status_code == 401
    assert wrong.json()["error"]["message"] == "Invalid API key"
    # Liveness stays open: load balancers probe it without credentials.
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}

    key = new_key(server)
    scraped = httpx.get(f"{server.url}/metrics", headers=bearer(key))  # what Prometheus' bearer sends
    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain")
    assert "dragoman_requests_total" in scraped.text
    checked = httpx.get(f"{server.url}/health/ready", headers={"x-api-key": key})
    assert checked.status_code == 200
    assert checked.json()["status"] == "ready" and checked.json()["backends"]["echo"]["ok"] is True
    # The admin password opens them too.
    assert httpx.get(f"{server.url}/metrics", headers=bearer(PASSWORD)).status_code == 200


def test_metrics_auth_admin_refuses_user_keys(tmp_path: Path) -> None:
    with dragoman_server(config(tmp_path, metrics={"auth": "admin"})) as server:
        key = new_key(server)
        refused = httpx.get(f"{server.url}/metrics", headers=bearer(key))
        assert refused.status_code == 403
        assert refused.json() == {"error": {
            "message": "GET /metrics needs the admin password (metrics.auth: admin); an API key is not enough",
            "type": "permission_error", "param": None, "code": None}}
        assert httpx.get(f"{server.url}/health/ready", headers=bearer(key)).status_code == 403
        nothing = httpx.get(f"{server.url}/metrics")
        assert nothing.status_code == 401
        assert nothing.json()["error"]["message"] == (
            "GET /metrics needs the admin password (Authorization: Bearer <admin password>); "
            "see metrics.auth in the README")
        assert httpx.get(f"{server.url}/metrics", headers=bearer("not-the-password")).status_code == 401
        assert httpx.get(f"{server.url}/metrics", headers=bearer(PASSWORD)).status_code == 200
        assert httpx.get(f"{server.url}/health/ready", headers=bearer(PASSWORD)).status_code == 200
        assert httpx.get(f"{server.url}/health").status_code == 200


def test_metrics_auth_none_keeps_them_open_in_keys_mode(tmp_path: Path) -> None:
    with dragoman_server(config(tmp_path, metrics={"auth": "none"})) as server:
        assert "dragoman_requests_total" in httpx.get(f"{server.url}/metrics").text
        assert httpx.get(f"{server.url}/health/ready").json()["status"] == "ready"


def test_metrics_are_open_by_default_without_keys(tmp_path: Path) -> None:
    with dragoman_server(config(tmp_path, auth={"mode": "none", "admin_password": PASSWORD})) as server:
        assert httpx.get(f"{server.url}/metrics").status_code == 200
        assert httpx.get(f"{server.url}/health/ready").status_code == 200


def test_metrics_auth_is_validated(tmp_path: Path) -> None:
    from dragoman.config import ConfigError, load_config

    path = tmp_path / "dragoman.yaml"
    path.write_text("backends: [{name: e, type: echo}]\nmetrics: {auth: everyone}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"metrics\.auth: Input should be 'none', 'key' or 'admin'"):
        load_config(path, environ={})


# ------------------------------------------------------------------------ admin sign-in throttling


def test_a_user_key_on_the_admin_api_is_refused_and_not_counted(server: ServerThread) -> None:
    key = new_key(server, "team")
    with httpx.Client(base_url=server.url) as client:
        for _ in range(22):  # the 22 requests locked the admin out for five minutes
            answer = client.get("/admin/api/keys", headers=bearer(key))
            assert answer.status_code == 403
            assert answer.json() == {"error": {
                "type": "permission",
                "message": "this is a dragoman API key, not the admin password; the admin API needs the "
                           "admin password", "param": None}}
        assert client.get("/admin/api/keys", headers=bearer(PASSWORD)).status_code == 200
        # The sign-in form says the same, and does not count it either.
        token = client.get("/admin/api/session").json()["csrf_token"]
        for _ in range(8):
            typed = client.post("/admin/api/session", json={"password": key}, headers={"x-csrf-token": token})
            assert typed.status_code == 403
            assert typed.json()["error"]["message"].startswith("this is a dragoman API key")
        signed = client.post("/admin/api/session", json={"password": PASSWORD}, headers={"x-csrf-token": token})
        assert signed.status_code == 200


def test_a_flood_from_another_address_does_not_lock_the_admin_out(server: ServerThread) -> None:
    with from_address(server, "127.0.0.2") as attacker:
        answers = [attacker.get("/admin/api/keys", headers=bearer(f"guess-{n}")).status_code for n in range(30)]
    assert answers[:5] == [401] * 5 and set(answers[5:]) == {429}
    with from_address(server, "127.0.0.1") as admin:
        started = time.monotonic()
        assert admin.get("/admin/api/keys", headers=bearer(PASSWORD)).status_code == 200
        assert time.monotonic() - started < 2
        token = admin.get("/admin/api/session").json()["csrf_token"]
        signed = admin.post("/admin/api/session", json={"password": PASSWORD}, headers={"x-csrf-token": token})
        assert signed.status_code == 200


def test_guessing_from_one_address_waits_longer_each_time(server: ServerThread) -> None:
    with from_address(server, "127.0.0.3") as client:
        for n in range(5):
            assert client.get("/admin/api/keys", headers=bearer(f"guess-{n}")).status_code == 401
        held = client.get("/admin/api/keys", headers=bearer(PASSWORD))
        assert held.status_code == 429
        assert held.json()["error"]["message"] == "too many failed sign-in attempts; try again later"
        first = int(held.headers["retry-after"])
        assert 1 <= first <= 4
        time.sleep(first + 0.2)
        # A delay, not a lockout: once it has passed, the right password gets in...
        assert client.get("/admin/api/keys", headers=bearer(PASSWORD)).status_code == 200
        # ...which also forgets the failures. Guessing again starts over, and the delay grows.
        for n in range(5):
            assert client.get("/admin/api/keys", headers=bearer(f"again-{n}")).status_code == 401
        time.sleep(first + 0.2)
        assert client.get("/admin/api/keys", headers=bearer("one-more")).status_code == 401
        second = client.get("/admin/api/keys", headers=bearer("and-another"))
        assert second.status_code == 429
        assert int(second.headers["retry-after"]) > first


def test_forwarded_addresses_count_only_behind_a_trusted_proxy(tmp_path: Path) -> None:
    # No trusted proxy: X-Forwarded-For is the client's own claim, and changing it gains nothing.
    with dragoman_server(config(tmp_path)) as server, httpx.Client(base_url=server.url) as client:
        answers = [client.get("/admin/api/keys", headers={**bearer(f"guess-{n}"),
                                                          "x-forwarded-for": f"198.51.100.{n}"}).status_code
                   for n in range(8)]
        assert answers == [401] * 5 + [429] * 3
    # Behind a trusted proxy every user shares the proxy's address; the header tells them apart.
    proxied = config(tmp_path / "p", server={"trusted_proxies": ["127.0.0.1"]})
    (tmp_path / "p").mkdir()
    with dragoman_server(proxied) as server, httpx.Client(base_url=server.url) as proxy:
        guesses = [proxy.get("/admin/api/keys", headers={**bearer(f"guess-{n}"),
                                                         "x-forwarded-for": "203.0.113.7"}).status_code
                   for n in range(8)]
        assert guesses == [401] * 5 + [429] * 3
        admin = proxy.get("/admin/api/keys", headers={**bearer(PASSWORD), "x-forwarded-for": "192.0.2.10"})
        assert admin.status_code == 200
